"""The main job, end to end on the bundled data and the packaged models (``bgm demo``).

1. A real LangChain RAG chain — MiniLM vector store over the passage pool, top-k retriever, SmolLM2 as the
   chat model — answers the training questions while :class:`BGMTraceCallbackHandler` records traces.
2. Silver passage sequences are synthesised from those traces (greedy search against the frozen reader),
   the bridge is trained on them (SL), then with PPO against the reader's answers (RL).
3. The bridges and the fixed baselines are evaluated on the dev questions; a table, JSON and plots are written.

Every reader call goes through the persistent call cache, so a re-run skips the LLM work it has done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes and places of the demo run (the defaults finish in minutes on 2 CPU cores)."""

    dataset: str = field(default="nq_open", metadata={"help": "bundled dataset: nq_open (retrieval) or hotpotqa (fixed candidates)"})
    train_questions: int = field(default=24, metadata={"help": "training questions answered by the chain and used for SPS/SL/RL"})
    dev_questions: int = field(default=20, metadata={"help": "dev questions for the final evaluation"})
    top_k: int = field(default=10, metadata={"help": "passages the retriever returns per question"})
    reader: str = field(default="smollm2", metadata={"help": "frozen reader: smollm2 (packaged SmolLM2-135M-Instruct), hf:PATH (a local causal LM folder) or toy"})
    output_dir: str = field(default="bgm_output", metadata={"help": "where traces, silver sequences, checkpoints, report and plots go"})
    reader_cache: str | None = field(default=None, metadata={"help": "reader call cache directory (default: $BGM_CACHE_DIR or ~/.cache/bgm-bridge/reader)"})
    silver_max_length: int = field(default=2, metadata={"help": "longest silver passage sequence"})
    silver_top_m: int | None = field(default=4, metadata={"help": "candidates tried per SPS step after the first (None: all)"})
    sl_epochs: int = field(default=8, metadata={"help": "supervised epochs over the silver sequences"})
    sl_learning_rate: float = field(default=1e-4, metadata={"help": "supervised learning rate"})
    rl_steps: int = field(default=4, metadata={"help": "PPO rollout steps (0 skips RL)"})
    rl_samples: int = field(default=4, metadata={"help": "sampled passage sequences per query per RL step"})
    rl_batch_size: int = field(default=6, metadata={"help": "queries per RL rollout step"})
    reward: str = field(default="contains+0.5*f1", metadata={"help": "downstream reward of SPS and RL (see bgm_model.rewards)"})
    seed: int = field(default=0, metadata={"help": "random seed"})


@dataclass
class DemoResult:
    output_dir: Path
    bridge_dir: Path
    report_path: Path
    plots: list[Path]
    table: str
    seconds: dict[str, float]


def _stage(name: str) -> None:
    logger.info("=" * 20 + " %s " + "=" * 20, name)


def _read_jsonl(path: Path, limit: int) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
                if len(rows) >= limit:
                    break
    return rows


def build_retriever(cfg: DemoConfig, out: Path, rows: Sequence[dict[str, Any]]) -> Any:
    """The LangChain retriever of the demo chain: MiniLM over the corpus, or a question's fixed candidates."""
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever

    from bgm_model.bundled import bundled_dataset
    from bgm_model.data import load_corpus, render_passage

    if cfg.dataset == "nq_open":
        from langchain_classic.embeddings import CacheBackedEmbeddings
        from langchain_classic.storage import LocalFileStore
        from langchain_core.vectorstores import InMemoryVectorStore

        from .langchain.embeddings import MiniLMEmbeddings

        corpus = load_corpus(bundled_dataset("nq_open", "corpus"))
        minilm = MiniLMEmbeddings()
        # LangChain's own embedding cache: re-runs skip embedding the pool.
        embeddings = CacheBackedEmbeddings.from_bytes_store(
            minilm, LocalFileStore(str(out / "embedding_cache")), namespace=minilm.embedder.fingerprint,
            key_encoder="sha256",
        )
        store = InMemoryVectorStore(embeddings)
        start = time.perf_counter()
        store.add_texts(corpus.rendered, metadatas=[{"passage_id": i} for i in corpus.ids], ids=corpus.ids)
        logger.info("vector store: %d passages in %.1fs", len(corpus.ids), time.perf_counter() - start)
        return store.as_retriever(search_kwargs={"k": cfg.top_k})

    candidates = {
        r["question"]: [
            Document(page_content=render_passage(p.get("title"), p["text"]), metadata={"title": p.get("title")})
            for p in r["passages"][: cfg.top_k]
        ]
        for r in rows
    }

    class FixedCandidatesRetriever(BaseRetriever):
        """HotpotQA ships each question's candidates: the 'retriever' returns them in file order."""

        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            return [Document(page_content=d.page_content, metadata=dict(d.metadata)) for d in candidates.get(query, [])]

    return FixedCandidatesRetriever()


def build_rag_chain(retriever: Any, chat_model: Any, template: Any) -> Any:
    """question -> retrieve -> the reader's own prompt (system + user message) -> chat model -> text."""
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

    def to_messages(inputs: dict[str, Any]) -> list[Any]:
        passages = [d.page_content for d in inputs["docs"]]
        return [SystemMessage(template.system), HumanMessage(template.user_message(inputs["question"], passages))]

    return (
        RunnableParallel(docs=retriever, question=RunnablePassthrough())
        | RunnableLambda(to_messages)
        | chat_model
        | StrOutputParser()
    )


def demo_arrangements() -> list[Any]:
    """The fixed baselines the demo compares with (``bgm evaluate`` runs the full set)."""
    from bgm_model.arrangements import (
        long_context_reorder,
        no_retrieval,
        retriever_order,
        reversed_order,
        top_k,
    )

    return [no_retrieval(), retriever_order(), reversed_order(), long_context_reorder(), top_k(1),
            top_k(1, repeat_top=True), top_k(3, reverse=True), top_k(3, reverse=True, repeat_top=True)]


def run_demo(cfg: DemoConfig, *, reader: Any = None) -> DemoResult:
    """Run the whole job; returns where everything was written."""
    from bgm_model import BridgeModel
    from bgm_model.arrangements import bridge_arrangement
    from bgm_model.bundled import bundled_dataset
    from bgm_model.data import QAExample
    from bgm_model.evaluation import evaluate
    from bgm_model.traces import read_traces
    from bgm_model.training.pipeline import BridgeRecipe, train_bridge

    from .langchain import BGMTraceCallbackHandler
    from .langchain.chat_model import ReaderChatModel

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    _stage("1/5 answer the training questions with a LangChain RAG chain, recording traces")
    train_rows = _read_jsonl(bundled_dataset(cfg.dataset, "train"), cfg.train_questions)
    dev_rows = _read_jsonl(bundled_dataset(cfg.dataset, "dev"), cfg.dev_questions)
    if reader is None:
        from bgm_model.cli.common import make_reader

        reader = make_reader(cfg.reader, cache=cfg.reader_cache or True)
    retriever = build_retriever(cfg, out, [*train_rows, *dev_rows])
    chain = build_rag_chain(retriever, ReaderChatModel(reader=reader), reader.template)
    traces_path = out / "traces.jsonl"
    traces_path.unlink(missing_ok=True)  # this run's traces only (the reader cache keeps the answers)
    handler = BGMTraceCallbackHandler(traces_path)
    from tqdm.auto import tqdm

    for row in tqdm(train_rows, desc="chain", unit="q"):
        chain.invoke(row["question"], config={"callbacks": [handler]})
    records = read_traces(traces_path)
    by_question = {r["question"]: r for r in train_rows}
    train_examples = [
        QAExample(id=str(by_question[rec.query]["id"]), question=rec.query, answers=list(by_question[rec.query]["answers"]),
                  passages=[p.content for p in rec.passages], source="traces")
        for rec in records if rec.query in by_question
    ]
    seconds["chain + traces"] = time.perf_counter() - t0
    logger.info("recorded %d traces -> %s", len(records), traces_path)

    _stage("2-4/5 silver passage sequences from the traces, then SL, then RL (PPO) against the frozen reader")
    trained = train_bridge(train_examples, reader, out, BridgeRecipe(
        reward=cfg.reward, silver_max_length=cfg.silver_max_length, silver_top_m=cfg.silver_top_m,
        max_passages=max(16, cfg.top_k), sl_epochs=cfg.sl_epochs, sl_learning_rate=cfg.sl_learning_rate,
        rl_steps=cfg.rl_steps, rl_samples=cfg.rl_samples, rl_batch_size=cfg.rl_batch_size, seed=cfg.seed,
    ))
    seconds.update(trained.seconds)
    sl_dir, rl_dir = trained.sl_dir, trained.final_dir

    _stage("5/5 evaluate on the dev questions")
    t = time.perf_counter()
    dev_docs = retriever.batch([r["question"] for r in dev_rows])
    dev_examples = [
        QAExample(id=str(r["id"]), question=r["question"], answers=list(r["answers"]),
                  passages=[d.page_content for d in docs], source=f"{cfg.dataset}/dev")
        for r, docs in zip(dev_rows, dev_docs)
    ]
    methods = demo_arrangements()
    methods.append(bridge_arrangement(BridgeModel.from_pretrained(sl_dir), name="BGM SL"))
    if rl_dir != sl_dir:
        methods.append(bridge_arrangement(BridgeModel.from_pretrained(rl_dir), name="BGM SL+RL"))
    report = evaluate(dev_examples, reader, methods, batch_size=4)  # small batches: a progress bar that moves
    seconds["evaluation"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    table = report.table(ci_metric="contains")
    report_path = out / "report.json"
    report_path.write_text(json.dumps({**report.to_dict(), "seconds": seconds, "config": asdict(cfg)}, indent=2))
    (out / "report.md").write_text(
        f"# bgm demo: {cfg.dataset}, {len(dev_examples)} dev questions, reader {reader.name}\n\n{table}\n"
    )
    plots = make_plots(out, report)
    return DemoResult(out, rl_dir, report_path, plots, table, seconds)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_plots(out: Path, report: Any) -> list[Path]:
    """Loss and reward curves, and accuracy / prompt tokens per method, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sl_log = [r for r in _read_log(out / "sl" / "log.jsonl") if "loss" in r]
    rl_log = [r for r in _read_log(out / "rl" / "log.jsonl") if "reward" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if sl_log:
        axes[0].plot([r.get("step", i) for i, r in enumerate(sl_log)], [r["loss"] for r in sl_log])
    axes[0].set(title="SL: teacher-forcing loss", xlabel="optimizer step", ylabel="loss")
    if rl_log:
        axes[1].plot([r.get("step", i) for i, r in enumerate(rl_log)], [r["reward"] for r in rl_log], label="mean reward")
        if "kl" in rl_log[0]:
            axes[1].plot([r.get("step", i) for i, r in enumerate(rl_log)], [r["kl"] for r in rl_log], label="KL to SL")
        axes[1].legend()
    axes[1].set(title="RL: reward of sampled sequences", xlabel="rollout step")
    fig.tight_layout()
    paths.append(out / "training_curves.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    names = [m.name for m in report.methods]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.5))
    colors = ["tab:orange" if n.startswith("BGM") else "tab:blue" for n in names]
    axes[0].barh(names, [m.contains for m in report.methods], color=colors)
    axes[0].set(title="answer containment (dev)", xlim=(0, 1))
    axes[1].barh(names, [m.prompt_tokens for m in report.methods], color=colors)
    axes[1].set(title="mean prompt tokens")
    axes[1].set_yticklabels([])
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    paths.append(out / "methods.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
