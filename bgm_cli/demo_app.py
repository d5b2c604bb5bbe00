"""The main job, end to end on the bundled data and the packaged models (``bgm demo``).

An application on top of the libraries: it wires the LangChain adapter (:mod:`bgm_integrations.langchain`), the
trace recorder, the training recipe (:class:`~bgm_model.training.pipeline.BridgeRecipe`) and evaluation.

1. A real LangChain RAG chain — MiniLM vector store over the passage pool, top-k retriever, SmolLM2 as the
   chat model — answers the training questions while :class:`BGMTraceCallbackHandler` records traces.
2. Silver passage sequences are synthesised from those traces (greedy search against the frozen reader),
   the bridge is trained on them (SL), then with PPO against the reader's answers (RL).
3. The bridges and the fixed baselines are evaluated on the dev questions; a table, JSON and plots are written.

Every reader call goes through the persistent call cache, so a re-run skips the LLM work it has done. The
trainers' resume checkpoints (``sl/checkpoint``, ``rl/checkpoint``, ~0.3 GB each) are removed once training is
done unless ``keep_checkpoints`` is set; the trained bridge is ``bridge/`` (``bridge_sl/`` without RL), loaded
by :func:`usage_snippet`'s code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bgm_cli.common import ReaderOptions
from bgm_model.training.pipeline import BridgeRecipe

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Sizes and places of the demo run (the defaults finish in minutes on 2 CPU cores)."""

    dataset: Literal["nq_open", "hotpotqa"] = field(default="nq_open", metadata={"help": "bundled dataset: nq_open (retrieval) or hotpotqa (fixed candidates)"})
    train_questions: int = field(default=24, metadata={"help": "training questions answered by the chain and used for SPS/SL/RL"})
    dev_questions: int = field(default=20, metadata={"help": "dev questions for the final evaluation"})
    top_k: int = field(default=10, metadata={"help": "passages the retriever returns per question"})
    reader: str = field(default="smollm2", metadata={"help": "frozen reader (--reader): smollm2, gemma3-270m, hf:PATH, openai:MODEL, langchain:/llama_index:module:factory or toy"})
    output_dir: str = field(default="bgm_output", metadata={"help": "where traces, silver sequences, checkpoints, report and plots go"})
    reader_cache: str | None = field(default=None, metadata={"help": "reader call cache directory (default: $BGM_CACHE_DIR or ~/.cache/bgm-bridge/reader)"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep the SL and RL resume checkpoints (sl/checkpoint, rl/checkpoint, ~0.3 GB each) instead of removing them once training is done"})
    recipe: BridgeRecipe = field(default_factory=lambda: BridgeRecipe(validation_fraction=0.25), metadata={"help": "how the bridge is trained: silver search, SL, RL (the recipe's defaults, with a quarter of the training questions held out for the validation verdict)"})
    reader_options: ReaderOptions = field(default_factory=ReaderOptions, metadata={"help": "the other reader flags (--base-url, --prompt-template, --concurrency, ...)"})


@dataclass
class DemoResult:
    output_dir: Path
    bridge_dir: Path
    report_path: Path
    plots: list[Path]
    table: str
    seconds: dict[str, float]
    verdict: str | None = None
    """The validation verdict: the bridge against the best fixed arrangement on the held-out questions."""


def usage_snippet(bridge_dir: str | Path) -> str:
    """The code that loads the bridge in ``bridge_dir`` into a LangChain and a LlamaIndex pipeline."""
    path = str(Path(bridge_dir).resolve())
    return (
        "# LangChain: rerank and select a retriever's documents with the bridge\n"
        "from bgm_integrations.langchain import BGMDocumentCompressor\n"
        f"compressor = BGMDocumentCompressor.from_pretrained({path!r})\n"
        "# LlamaIndex: the same as a node postprocessor\n"
        "from bgm_integrations.llama_index import BGMNodePostprocessor\n"
        f"postprocessor = BGMNodePostprocessor.from_pretrained({path!r})"
    )


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

    from bgm_model.assets import bundled_dataset
    from bgm_model.data import load_corpus, render_passage

    if cfg.dataset == "nq_open":
        from langchain_core.vectorstores import InMemoryVectorStore

        from bgm_integrations.langchain.embeddings import MiniLMEmbeddings

        corpus = load_corpus(bundled_dataset("nq_open", "corpus"))
        # The project's one corpus-embedding cache (the file DenseRetriever and load_examples use): re-runs
        # skip embedding the pool.
        embeddings = MiniLMEmbeddings(cache_dir=out / "embedding_cache")
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


def chain_llm(reader: Any) -> Any:
    """The chat model of the demo's chain: the reader's own (through its call cache) where it has one, the
    user's LangChain model for a ``langchain:`` reader."""
    from bgm_integrations.langchain.chat_model import ReaderChatModel
    from bgm_integrations.langchain.reader import LangChainReader

    if callable(getattr(reader, "answer_messages", None)):
        return ReaderChatModel(reader=reader)
    if isinstance(reader, LangChainReader):
        return reader.model
    raise ValueError(
        f"the demo's LangChain chain cannot call a {type(reader).__name__}; use a local, openai: or langchain: reader"
    )


def build_rag_chain(retriever: Any, chat_model: Any, template: Any) -> Any:
    """question -> retrieve -> the reader's own prompt (its chat messages) -> chat model -> text."""
    from langchain_core.messages import convert_to_messages
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

    def to_messages(inputs: dict[str, Any]) -> list[Any]:
        passages = [d.page_content for d in inputs["docs"]]
        return convert_to_messages(template.messages(inputs["question"], passages))

    return (
        RunnableParallel(docs=retriever, question=RunnablePassthrough())
        | RunnableLambda(to_messages)
        | chat_model
        | StrOutputParser()
    )


def demo_arrangements() -> list[Any]:
    """The fixed baselines the demo compares with (``bgm evaluate`` runs the full set)."""
    from bgm_model.evaluation.arrangements import (
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
    from bgm_integrations.langchain import BGMTraceCallbackHandler
    from bgm_model import BridgeModel
    from bgm_model.assets import bundled_dataset
    from bgm_model.data import QAExample
    from bgm_model.evaluation import evaluate
    from bgm_model.evaluation.arrangements import bridge_arrangement
    from bgm_model.traces import read_traces
    from bgm_model.training.pipeline import train_bridge

    out = Path(cfg.output_dir).expanduser().resolve()  # every path the demo reports is absolute
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    _stage("1/5 answer the training questions with a LangChain RAG chain, recording traces")
    train_rows = _read_jsonl(bundled_dataset(cfg.dataset, "train"), cfg.train_questions)
    dev_rows = _read_jsonl(bundled_dataset(cfg.dataset, "dev"), cfg.dev_questions)
    if reader is None:
        from bgm_cli.common import make_reader

        reader = make_reader(cfg.reader, cfg.reader_options, cache=cfg.reader_cache)
    retriever = build_retriever(cfg, out, [*train_rows, *dev_rows])
    chain = build_rag_chain(retriever, chain_llm(reader), reader.template)
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
    recipe = cfg.recipe
    recipe = replace(recipe, bridge=replace(recipe.bridge, max_passages=max(recipe.bridge.max_passages, cfg.top_k)))
    trained = train_bridge(train_examples, reader, out, recipe, keep_checkpoints=cfg.keep_checkpoints)
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
    verdict = trained.verdict.sentence() if trained.verdict is not None else None
    if verdict:
        table += f"\n\nValidation verdict ({recipe.reward}): {verdict}"
    report_path = out / "report.json"
    report_path.write_text(json.dumps({
        **report.to_dict(), "seconds": seconds, "config": asdict(cfg),
        "validation_verdict": trained.verdict.to_dict() if trained.verdict is not None else None,
    }, indent=2))
    (out / "report.md").write_text(
        f"# bgm demo: {cfg.dataset}, {len(dev_examples)} dev questions, reader {reader.name}\n\n{table}\n"
    )
    plots = make_plots(out, report)
    return DemoResult(out, rl_dir, report_path, plots, table, seconds, verdict)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_plots(out: Path, report: Any) -> list[Path]:
    """Loss and reward curves, and containment (95% CI) / prompt tokens per method, as PNG files."""
    from bgm_model.evaluation.plots import plot_methods, plot_training_curves

    return [
        plot_training_curves(out / "training_curves.png", _read_log(out / "sl" / "log.jsonl"),
                             _read_log(out / "rl" / "log.jsonl")),
        plot_methods(out / "methods.png", report, "contains", title="answer containment (dev, 95% CI)"),
    ]
