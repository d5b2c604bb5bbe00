"""The optional CTranslate2 reader: install hint, names, CLI choices (fast), and, in the slow tier, the real
SmolLM2 converted to CTranslate2 compared with the transformers reader on nq-style prompts."""

from __future__ import annotations

import argparse
import builtins
import importlib.util
import sys

import pytest

from bgm_cli.common import READER_HELP, add_reader_arguments, build_reader
from bgm_model.readers.base import Reader, reader_agreement


def _hide_ctranslate2(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "ctranslate2" or name.startswith("ctranslate2."):
            raise ImportError("No module named 'ctranslate2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    for mod in [m for m in sys.modules if m == "ctranslate2" or m.startswith("ctranslate2.")]:
        monkeypatch.delitem(sys.modules, mod)


def test_package_import_does_not_load_ctranslate2():
    import subprocess

    code = "import sys, bgm_model.readers as r; r.CT2Reader; print('ctranslate2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_ctranslate2_says_how_to_install(monkeypatch, tmp_path):
    from bgm_model.readers import ct2

    _hide_ctranslate2(monkeypatch)
    with pytest.raises(ImportError, match=r"pip install 'bgm-bridge\[ct2\]'"):
        ct2.require_ctranslate2()
    with pytest.raises(ImportError, match=r"bgm-bridge\[ct2\]"):
        ct2.CT2Reader(object(), object())
    with pytest.raises(ImportError, match=r"bgm-bridge\[ct2\]"):
        ct2.load_smollm2_ct2_reader("int8", model_dir=tmp_path / "m")
    with pytest.raises(ImportError, match=r"bgm-bridge\[ct2\]"):
        ct2.convert_smollm2(tmp_path / "m", "float32")


def test_unknown_quantization_is_rejected(tmp_path):
    from bgm_model.readers import ct2

    with pytest.raises(ValueError, match="int8"):
        ct2.load_smollm2_ct2_reader("int4", model_dir=tmp_path / "m")
    with pytest.raises(ValueError, match="float32"):
        ct2.convert_smollm2(tmp_path / "m", "fp8")


def test_default_model_dir_follows_bgm_cache_dir(monkeypatch, tmp_path):
    from bgm_model.readers import ct2

    monkeypatch.setenv("BGM_CACHE_DIR", str(tmp_path))
    assert ct2.default_ct2_dir("int8") == tmp_path / "ct2" / "int8"
    monkeypatch.delenv("BGM_CACHE_DIR")
    assert ct2.default_ct2_dir("float32").parts[-3:] == ("bgm-bridge", "ct2", "float32")


class _FakeStep:
    def __init__(self, batch_id, token_id):
        self.batch_id, self.token_id = batch_id, token_id


class _FakeResult:
    def __init__(self, ids):
        self.sequences_ids = [ids]


class _FakeScore:
    def __init__(self, log_probs):
        self.log_probs = log_probs


class _FakeGenerator:
    """Stands in for ctranslate2.Generator: echoes a fixed reply, calling the step callback like CT2."""

    compute_type = "int8_float32"

    def __init__(self, reply_ids, log_prob):
        self.reply_ids = reply_ids
        self.log_prob = log_prob
        self.calls = []

    def score_batch(self, tokens, *, max_input_length=1024, **kwargs):
        assert max_input_length == 0  # CTranslate2 truncates at 1024 tokens by default
        return [_FakeScore([self.log_prob] * (len(t) - 1)) for t in tokens]

    def generate_batch(self, start_tokens, *, max_length, callback=None, **kwargs):
        self.calls.append((start_tokens, max_length, kwargs))
        out = []
        for b in range(len(start_tokens)):
            ids = []
            for t in self.reply_ids[:max_length]:
                ids.append(t)
                if callback is not None and callback(_FakeStep(b, t)):
                    break
            out.append(_FakeResult(ids))
        return out


@pytest.fixture
def fake_ct2_reader(smollm2_tokenizer):
    pytest.importorskip("ctranslate2")
    from bgm_model.readers.ct2 import CT2Reader

    def make(reply: str, log_prob: float = -0.5, **kwargs):
        ids = smollm2_tokenizer(reply, add_special_tokens=False)["input_ids"]
        gen = _FakeGenerator(ids, log_prob)
        kwargs.setdefault("cache", False)
        return CT2Reader(gen, smollm2_tokenizer, name="fake", **kwargs), gen

    return make


def test_name_holds_backend_and_compute_type(fake_ct2_reader, tiny_reader_factory):
    reader, _ = fake_ct2_reader("Paris", max_new_tokens=7)
    assert reader.name == "fake|ct2-int8_float32|greedy:7|lines:1"
    hf = tiny_reader_factory(max_new_tokens=7)
    assert reader.name != hf.name and "ct2" not in hf.name


def test_prompts_and_cleaning_match_hf_reader(fake_ct2_reader, tiny_reader_factory):
    reader, gen = fake_ct2_reader("  Paris, France\nbecause the passage says so", max_new_tokens=12)
    hf = tiny_reader_factory()
    q, ps = "where is the eiffel tower", ["The Eiffel Tower is in Paris.", "Berlin is in Germany."]
    assert reader.prompt_text(q, ps) == hf.prompt_text(q, ps)
    assert reader.encode_prompt(q, ps) == hf.encode_prompt(q, ps)
    assert reader.answer(q, ps) == "Paris, France"
    (start_tokens, max_length, kwargs) = gen.calls[0]
    assert start_tokens == [hf.tokenizer.convert_ids_to_tokens(hf.encode_prompt(q, ps))]
    assert max_length == 12 and kwargs["include_prompt_in_result"] is False and kwargs["beam_size"] == 1
    assert set(kwargs["end_token"]) == hf._stop_ids
    # Decoding stopped at the first line break (the callback), as HFReader does.
    assert reader.stats.generated_tokens < len(hf.tokenizer("  Paris, France\nbecause the passage says so")["input_ids"])


def test_batches_group_prompts_of_similar_length(fake_ct2_reader):
    reader, _ = fake_ct2_reader("x", max_batch_size=2, max_length_spread=5)
    prompts = [[0] * n for n in (10, 30, 12, 11, 31, 100)]
    assert reader._groups(prompts) == [[0, 3], [2], [1, 4], [5]]


def test_agreement_of_identical_and_different_readers(fake_ct2_reader):
    a, _ = fake_ct2_reader("Paris")
    b, _ = fake_ct2_reader("Paris")
    c, _ = fake_ct2_reader("Berlin", log_prob=-0.75)
    qs, ps = ["q1", "q2"], [["p"], []]
    same = reader_agreement(a, b, qs, ps)
    assert same.answer_agreement == 1.0 and same.differing == [] and same.calls == 2
    assert same.scored == 2 and same.max_score_diff == 0.0
    diff = reader_agreement(a, c, qs, ps)
    assert diff.answer_agreement == 0.0 and diff.differing == [0, 1]
    # Both score the reference answers ("Paris"): each token -0.5 vs -0.75.
    assert diff.max_score_diff == pytest.approx(0.25) and diff.mean_score_diff == pytest.approx(0.25)
    assert a.score_batch(["q"], [["p"]], ["Paris, France"]) == [pytest.approx(-0.5)]


def test_agreement_without_scoring_reports_answers_only(fake_ct2_reader):
    from bgm_model.readers.callable import CallableReader

    a, _ = fake_ct2_reader("Paris")
    other = CallableReader(lambda question, passages: "Paris" if passages else "Rome", cache=False)
    result = reader_agreement(a, other, ["q1", "q2"], [["p"], []])
    assert result.answer_agreement == 0.5 and result.differing == [1]
    assert result.scored == 0 and result.max_score_diff is None


def _parse(*argv):
    parser = argparse.ArgumentParser()
    add_reader_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("spec", "compute_type"), [("ct2", "int8"), ("ct2:int8", "int8"), ("ct2:float32", "float32")]
)
def test_cli_ct2_choices(monkeypatch, spec, compute_type):
    from bgm_model.readers import ct2

    seen = {}

    def fake_load(compute_type, **kwargs):
        seen.update(kwargs, compute_type=compute_type)
        return "reader"

    monkeypatch.setattr(ct2, "load_smollm2_ct2_reader", fake_load)
    assert build_reader(_parse("--reader", spec, "--max-new-tokens", "9", "--reader-cache", "none")) == "reader"
    assert seen == {"compute_type": compute_type, "cache": False, "max_new_tokens": 9}
    assert "ct2:int8" in READER_HELP and "ct2:float32" in READER_HELP


def test_cli_rejects_unknown_ct2_type():
    from bgm_cli.errors import UsageError

    with pytest.raises(UsageError, match="unknown --reader 'ct2:int4'"):
        build_reader(_parse("--reader", "ct2:int4"))


# -- slow: the real SmolLM2 converted to CTranslate2 ------------------------------------------------------

# nq_open-style questions with short Wikipedia-like passages (gold passage first or later, or none).
NQ_PROMPTS = [
    ("who wrote the novel pride and prejudice", [
        "Pride and Prejudice is an 1813 novel of manners written by Jane Austen.",
        "Emma is a novel by Jane Austen, first published in December 1815.",
    ]),
    ("when did the first man land on the moon", [
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
        "Apollo 11 was the spaceflight that first landed humans on the Moon, on July 20, 1969.",
    ]),
    ("what is the largest planet in the solar system", [
        "Jupiter is the fifth planet from the Sun and the largest in the Solar System.",
    ]),
    ("who painted the mona lisa", []),
    ("what is the capital city of australia", [
        "Sydney is the most populous city in Australia.",
        "Canberra is the capital city of Australia, located in the Australian Capital Territory.",
        "Melbourne is the capital of the state of Victoria.",
    ]),
]


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ct2")


def _ct2(compute_type, ct2_dir):
    from bgm_model.readers.ct2 import load_smollm2_ct2_reader

    return load_smollm2_ct2_reader(
        compute_type, cache=False, model_dir=ct2_dir / compute_type, intra_threads=1, max_new_tokens=16
    )


@pytest.mark.slow
def test_ct2_float32_equals_transformers(smollm2, ct2_dir):
    pytest.importorskip("ctranslate2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs gguf")
    reader = _ct2("float32", ct2_dir)
    assert isinstance(reader, Reader) and "|ct2-float32|" in reader.name
    questions = [q for q, _ in NQ_PROMPTS]
    passages = [ps for _, ps in NQ_PROMPTS]
    agreement = reader_agreement(smollm2, reader, questions, passages)
    assert agreement.answer_agreement == 1.0, agreement
    assert agreement.scored == len(NQ_PROMPTS) and agreement.max_score_diff < 1e-2
    # Converted once, then reused from the folder.
    assert (ct2_dir / "float32" / "bgm_ct2.json").exists()
    again = _ct2("float32", ct2_dir)
    assert again.answer_batch(questions[:2], passages[:2]) == smollm2.answer_batch(questions[:2], passages[:2])
    # A long prompt (past CTranslate2's default max_input_length of 1024) is neither truncated nor changed.
    long_passages = [f"Passage filler {i}: " + "The river flows through the old town. " * 12 for i in range(14)]
    long_passages.insert(7, NQ_PROMPTS[2][1][0])
    assert len(reader.encode_prompt(questions[2], long_passages)) > 1100
    lps_hf = smollm2.answer_token_logprobs([questions[2]], [long_passages], ["Jupiter"])[0]
    lps_ct2 = reader.answer_token_logprobs([questions[2]], [long_passages], ["Jupiter"])[0]
    assert len(lps_hf) == len(lps_ct2) and max(abs(x - y) for x, y in zip(lps_hf, lps_ct2)) < 1e-2
    assert reader.answer(questions[2], long_passages) == smollm2.answer(questions[2], long_passages)


@pytest.mark.slow
def test_ct2_int8_agreement_is_reported(smollm2, ct2_dir):
    pytest.importorskip("ctranslate2")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs gguf")
    reader = _ct2("int8", ct2_dir)
    assert "|ct2-int8" in reader.name
    questions = [q for q, _ in NQ_PROMPTS]
    passages = [ps for _, ps in NQ_PROMPTS]
    answers = reader.answer_batch(questions, passages)
    assert all(a.strip() for a in answers)
    agreement = reader_agreement(smollm2, reader, questions, passages)
    assert 0.0 <= agreement.answer_agreement <= 1.0
    assert agreement.max_score_diff is not None and agreement.max_score_diff >= 0.0
    print(f"CTranslate2 int8 vs transformers fp32: {agreement}")
