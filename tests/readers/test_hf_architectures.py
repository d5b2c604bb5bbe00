"""HFReader on the cache layouts of the common architectures (tiny random models, the real SmolLM2 tokenizer
and chat template): every fast path gives the reference computation's answers and scores, and where one
cannot apply the reader says so once and falls back.

Sliding-window models get a window of 24 tokens and prompts of ~60-130, so their sliding layers really slide:
transformers keeps only the last window of their cells, which the fast paths can neither crop nor copy whole.
"""

from __future__ import annotations

import logging

import pytest
import torch

from bgm_model.readers.hf import HFReader
from bgm_model.readers.hf import reader as hf_reader

QUESTION = "where is the eiffel tower"
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Berlin is the capital and largest city of Germany.",
    "The tower was built for the 1889 World's Fair.",
    "Mount Fuji is the highest mountain in Japan.",
    "Gustave Eiffel's company designed and built the tower.",
]
# Multi-passage prompts sharing prefixes at several depths (one selection step, growing and reordered lists),
# plus a prompt without passages and one of another question.
PROMPTS = (
    [(QUESTION, [PASSAGES[0], p]) for p in PASSAGES[1:]]
    + [(QUESTION, PASSAGES[:3]), (QUESTION, PASSAGES), (QUESTION, PASSAGES[::-1]), (QUESTION, [])]
    + [("who built the tower", PASSAGES[2:])]
)
TARGETS = [
    ["Paris", "Paris, France"], ["Berlin"], [], ["the 1889 World's Fair"], ["Gustave Eiffel"], ["Paris"],
    ["in Paris", "Japan"], ["Paris"], ["Gustave Eiffel's company"],
]  # fmt: skip
WINDOW = 24
LOGGER = hf_reader.__name__

SPLIT_NOTE = "split prefix attention covers full-attention layers only"
EAGER_NOTE = (
    "ragged decoding, one-pass target scoring, split prefix attention off: attention implementation 'eager'"
)
LAYOUT_NOTE = (
    "prefix reuse, prompt memory and batched decoding off: the model's cache has layer types ['conv']"
)


def _config(arch: str, vocab: int):
    import transformers as tf

    common = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        # Wide weights spread the logits, so greedy argmaxes are not near-ties decided by rounding.
        initializer_range=0.5,
    )  # fmt: skip
    if arch.endswith("-eager"):  # the other models run what transformers picks for them
        common["attn_implementation"] = "eager"
    mixed = ["sliding_attention", "full_attention", "sliding_attention"]
    if arch in ("llama", "llama-eager"):
        return tf.LlamaConfig(**common)
    if arch in ("qwen2", "qwen3"):
        cls = tf.Qwen2Config if arch == "qwen2" else tf.Qwen3Config
        # max_window_layers=1: layer 0 attends fully, the others in the window (as Qwen's configs lay it out).
        return cls(**common, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, head_dim=8)
    if arch == "gemma2":  # eager only in transformers (SDPA has no logit soft-capping)
        return tf.Gemma2Config(**common, sliding_window=WINDOW, head_dim=8, layer_types=mixed)
    if arch in ("gemma3", "gemma3-eager"):
        return tf.Gemma3TextConfig(**common, sliding_window=WINDOW, head_dim=8, layer_types=mixed)
    if arch == "phi3":  # every layer in the window, no layer_types
        return tf.Phi3Config(**common, sliding_window=WINDOW)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=WINDOW)
    if arch == "lfm2":  # convolution layers: a cache layout the reader cannot crop or copy
        return tf.Lfm2Config(**common, layer_types=["conv", "full_attention", "conv"])
    raise ValueError(arch)


# arch -> (the attention implementation it runs, sliding layers?, the fallback note, fast paths on)
ARCHS = {
    "llama": ("sdpa", False, None, True),
    "llama-eager": ("eager", False, EAGER_NOTE, False),
    "qwen2": ("sdpa", True, SPLIT_NOTE, True),
    "qwen3": ("sdpa", True, SPLIT_NOTE, True),
    "gemma2": ("eager", True, EAGER_NOTE, False),
    "gemma3": ("sdpa", True, SPLIT_NOTE, True),
    "gemma3-eager": ("eager", True, EAGER_NOTE, False),
    "phi3": ("sdpa", True, SPLIT_NOTE, True),
    "mistral": ("sdpa", True, SPLIT_NOTE, True),
    "lfm2": ("sdpa", False, LAYOUT_NOTE, False),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def arch_model(request, smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param, len(smollm2_tokenizer))).eval()
    return request.param, model


def _reader(model, tokenizer, **kwargs) -> HFReader:
    return HFReader(model, tokenizer, name="tiny", cache=False, max_new_tokens=8, **kwargs)


def _full_forward_score(reader: HFReader, question: str, passages: list[str], answer: str) -> float:
    """Reference of a score: one plain forward pass of the model over prompt + answer, no cache anywhere."""
    prompt = reader.encode_prompt(question, passages)
    ans = reader._encode_answer(answer)
    with torch.no_grad():
        logits = reader.model(input_ids=torch.tensor([prompt + ans])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return float(logp.gather(1, torch.tensor(ans)[:, None]).mean())


def test_fast_paths_equal_the_reference_on_every_architecture(
    arch_model, smollm2_tokenizer, caplog, monkeypatch
):
    arch, model = arch_model
    implementation, sliding, note, fast_paths = ARCHS[arch]
    assert model.config._attn_implementation == implementation
    # Split every prompt segment of 2+ new tokens (the real threshold is far above these prompts).
    monkeypatch.setattr(hf_reader, "_SPLIT_MIN_NEW_TOKENS", 2)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fast = _reader(model, smollm2_tokenizer)
        reference = _reader(model, smollm2_tokenizer, prefix_reuse=False, decode_batch_size=1)
    notes = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    if note is None:
        assert notes == []
    else:  # one note, from the fast reader (the reference asks for no fast path)
        assert len(notes) == 1 and note in notes[0], notes
    assert fast.fuses_scoring is fast.decodes_ragged is fast.splits_prefix_attention is fast_paths

    questions, lists = [q for q, _ in PROMPTS], [ps for _, ps in PROMPTS]
    lengths = [len(fast.encode_prompt(q, ps)) for q, ps in PROMPTS]
    if sliding:  # every prompt is longer than the window, most of them several times
        assert min(lengths) > WINDOW and sorted(lengths)[len(lengths) // 2] > 3 * WINDOW
    answers = fast.answer_batch(questions, lists)
    assert answers == reference.answer_batch(questions, lists)
    assert any(len(fast._encode_answer(a)) > 2 for a in answers)  # several decoding steps
    if arch != "lfm2":
        assert len(set(answers)) >= 3  # the answers depend on the prompt (a model mixing its whole context)
        assert fast.stats.reused_tokens > 0 and fast.stats.new_tokens < reference.stats.new_tokens
    else:  # the fallback is the reference computation
        assert fast.stats.reused_tokens == 0 and fast.stats.new_tokens == reference.stats.new_tokens

    golds = [ts[0] if ts else "Paris" for ts in TARGETS]
    scores = fast.score_batch(questions, lists, golds)  # after answering: from the remembered prompts
    assert scores == pytest.approx(reference.score_batch(questions, lists, golds), abs=1e-4)
    for (q, ps), gold, score in list(zip(PROMPTS, golds, scores, strict=True))[:3]:
        assert score == pytest.approx(_full_forward_score(fast, q, ps, gold), abs=1e-4)

    fresh = _reader(model, smollm2_tokenizer)
    got_answers, got_scores = fresh.answer_and_score_batch(questions, lists, TARGETS)
    ref_answers, ref_scores = reference.answer_and_score_batch(questions, lists, TARGETS)
    assert got_answers == ref_answers == answers
    assert [len(s) for s in got_scores] == [len(t) for t in TARGETS]
    for got, ref in zip(got_scores, ref_scores, strict=True):
        assert got == pytest.approx(ref, abs=1e-4)


def test_ragged_step_keeps_to_the_window(smollm2_tokenizer):
    # One batched decoding step of a Gemma-3 (sliding + global layers): rows back to back in one flat cache,
    # each sliding layer reading only the last window of its row, give each row's logits from its own native
    # cache (transformers' sliding layers, which hold only the window), and never read between rows (NaN).
    from transformers import AutoModelForCausalLM, DynamicCache

    from bgm_model.readers.hf.attention import use_reader_attention
    from bgm_model.readers.hf.kv_cache import PagedLayer, Pages, full_kv_cache

    torch.manual_seed(4)
    model = AutoModelForCausalLM.from_config(_config("gemma3", len(smollm2_tokenizer))).eval()
    lengths = [WINDOW + 7, 9, 3 * WINDOW]
    rows = [torch.randint(10, 500, (1, n)) for n in lengths]
    pages = Pages(lengths, room=2, device=torch.device("cpu"))
    flat: list[list[torch.Tensor]] = []
    expected = []
    with torch.no_grad():
        for r, ids in enumerate(rows):
            full = full_kv_cache(model.config)
            model(input_ids=ids, cache=full, use_cache=True)
            for li, layer in enumerate(full.layers):
                if r == 0:
                    shape = (1, layer.keys.shape[1], pages.capacity, layer.keys.shape[3])
                    flat.append([torch.full(shape, float("nan")), torch.full(shape, float("nan"))])
                flat[li][0][:, :, pages.starts[r] : pages.ends[r]] = layer.keys
                flat[li][1][:, :, pages.starts[r] : pages.ends[r]] = layer.values
            native = DynamicCache(config=model.config)
            model(input_ids=ids, cache=native, use_cache=True)
            assert native.layers[0].keys.shape[2] < max(lengths[r], WINDOW)  # the sliding layer really slid
            step = model(input_ids=torch.tensor([[11 + r]]), cache=native, use_cache=True).logits[0, -1]
            expected.append(step)
        paged = DynamicCache(config=model.config)
        paged.layers = [PagedLayer(k, v, pages) for k, v in flat]
        spans = pages.begin_step([0, 1, 2])
        with use_reader_attention(model):
            ragged = model(
                input_ids=torch.tensor([[11], [12], [13]]),
                position_ids=torch.tensor([[n] for n in lengths]),
                cache=paged,
                use_cache=True,
                bgm_row_spans=spans,
            ).logits[:, -1]
    assert torch.isfinite(ragged).all()
    assert (ragged - torch.stack(expected)).abs().max() <= 1e-4


def test_tree_mask_per_window_is_required_past_the_window():
    from bgm_model.readers.hf.attention import reader_sdpa_forward

    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 40, 8)
    mask = torch.ones(3, 40, dtype=torch.bool)
    with pytest.raises(ValueError, match="sliding window 16 needs its own tree mask"):
        reader_sdpa_forward(None, q, k, k, None, bgm_tree_mask=mask, sliding_window=16)
    with pytest.raises(ValueError, match="no tree mask for a layer of sliding window 16"):
        reader_sdpa_forward(None, q, k, k, None, bgm_tree_mask={None: mask}, sliding_window=16)
    with pytest.raises(ValueError, match="softcap"):
        reader_sdpa_forward(None, q, k, k, None, bgm_tree_mask={None: mask}, softcap=50.0)


def test_cache_layouts_and_blockers_are_read_from_the_config(smollm2_tokenizer):
    from transformers import AutoModelForCausalLM

    from bgm_model.readers.hf.attention import reader_attention_blocker
    from bgm_model.readers.hf.kv_cache import full_kv_cache, layer_windows

    vocab = len(smollm2_tokenizer)
    assert layer_windows(_config("llama", vocab)) == ([None, None, None], "")
    assert layer_windows(_config("qwen2", vocab)) == ([None, WINDOW, WINDOW], "")
    assert layer_windows(_config("gemma3", vocab)) == ([WINDOW, None, WINDOW], "")
    assert layer_windows(_config("mistral", vocab)) == ([WINDOW] * 3, "")
    assert layer_windows(_config("lfm2", vocab)) == (None, "layer types ['conv']")
    cache = full_kv_cache(_config("gemma3", vocab))
    assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer"] * 3
    torch.manual_seed(0)
    gemma2 = AutoModelForCausalLM.from_config(_config("gemma2", vocab))
    assert "attention implementation 'eager'" in reader_attention_blocker(gemma2)
    gemma2.config._attn_implementation = "sdpa"  # what the reader would meet if someone forced SDPA
    assert reader_attention_blocker(gemma2) == "attention logit soft-capping, which SDPA lacks"
