"""A toy bridge environment with a known optimum, for fast tests of silver search, SL and RL.

Each example asks ``"What is the secret code of <keyword>?"``. Exactly one candidate, the *key passage* X,
reads ``"The secret code of <keyword> is <word1> <word2>."``; the other candidates are distractors of the same
shape about *other* keywords, so X is recognisable from the text (it contains the question's keyword) and a
bridge can learn to pick it. X's position among the candidates varies from example to example.

:class:`ToyReader` is deterministic and answers from the *end* of the passage sequence:

=============================================  ====================  ====  =====
passage sequence                               answer                EM    F1
=============================================  ====================  ====  =====
last two passages are both X (``[..., X, X]``)  ``"<word1> <word2>"``  1     1
only the last passage is X (``[..., D, X]``)    ``"<word1>"``          0     2/3
X absent or not last, or no passages            ``"unknown"``          0     0
=============================================  ====================  ====  =====

**The optimum.** With EM (or F1) as the reward the maximum is 1, reached exactly by sequences ending in
``X, X``; the unique *shortest* one is ``[X, X]`` (:func:`toy_optimal_ids`). Greedy silver search with a dense
tie-breaker finds it: step 1 ties on EM (0 everywhere) but F1 picks ``[X]`` (2/3 against 0), step 2 picks
``[X, X]`` (EM 1). Without the tie-breaker every first step ties at 0, nothing improves and greedy stops at
``[]``, which is what makes the environment a test of the tie rule.

With ``supports_scoring=True`` the reader also scores answers: the log-likelihood of ``answer`` is
``log(0.05 + 0.95 * F1(own answer, answer))``, so the gold answer scores 0 on ``[..., X, X]``,
``log(0.05 + 0.95 * 2/3)`` on ``[..., X]`` and ``log(0.05)`` otherwise.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence

from bgm_model.data import QAExample
from bgm_model.readers.base import CacheSpec, Reader
from bgm_model.rewards import token_f1

__all__ = ["TOY_PARTIAL_F1", "ToyReader", "make_toy_examples", "toy_key_index", "toy_optimal_ids"]

#: F1 of the partial answer (first word of a two-word code).
TOY_PARTIAL_F1 = 2.0 / 3.0

_QUESTION = re.compile(r"secret code of (\S+?)\?")
_PASSAGE = "The secret code of {keyword} is {code}."
_UNKNOWN = "unknown"

_ADJECTIVES = [
    "amber",
    "azure",
    "brisk",
    "calm",
    "crimson",
    "dusky",
    "eager",
    "fallow",
    "gilded",
    "hazel",
    "ivory",
    "jade",
    "keen",
    "lunar",
    "misty",
    "noble",
    "olive",
    "pale",
    "quiet",
    "russet",
    "silver",
    "tawny",
    "umber",
    "vivid",
    "wintry",
]
_NOUNS = [
    "badger",
    "bison",
    "crane",
    "dingo",
    "egret",
    "falcon",
    "gecko",
    "heron",
    "ibis",
    "jackal",
    "koala",
    "lemur",
    "marten",
    "newt",
    "otter",
    "panda",
    "quail",
    "raven",
    "stoat",
    "tapir",
    "urchin",
    "viper",
    "walrus",
    "yak",
    "zebra",
]


def _key_code(question: str, passage: str) -> str | None:
    """The code if ``passage`` is the key passage for ``question``, else None."""
    m = _QUESTION.search(question)
    if not m:
        return None
    prefix = f"The secret code of {m.group(1)} is "
    if passage.startswith(prefix) and passage.endswith("."):
        return passage[len(prefix) : -1]
    return None


class ToyReader(Reader):
    """The deterministic reader of the toy environment (see the module docstring).

    It goes through the real :class:`Reader` public methods (input checks, de-duplication within a batch,
    optional cache); ``answer_calls`` / ``answer_prompts`` (and ``score_*``) count what reached the "model".
    """

    def __init__(self, *, supports_scoring: bool = False, cache: CacheSpec = False) -> None:
        super().__init__("toy-reader-v1", cache=cache)
        self._scoring = supports_scoring
        self.answer_calls = 0
        self.answer_prompts = 0
        self.score_calls = 0
        self.score_prompts = 0

    def toy_answer(self, question: str, passages: Sequence[str]) -> str:
        if not passages:
            return _UNKNOWN
        last = _key_code(question, passages[-1])
        if last is None:
            return _UNKNOWN
        if len(passages) >= 2 and passages[-2] == passages[-1]:
            return last
        return last.split()[0]

    def answer_messages(self, messages: Sequence[dict[str, str]]) -> str:
        """Answer chat messages built with this reader's template (question and passages read back from the
        user turn), so the toy also drives a LangChain chain through ``ReaderChatModel``."""
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        match = re.search(r"Question: (.*)", user)
        question = match.group(1) if match else ""
        passages = re.findall(r"^Passage \d+: (.*)$", user, flags=re.M)
        return self.answer(question, passages)

    def _answer_uncached(self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]]) -> list[str]:
        self.answer_calls += 1
        self.answer_prompts += len(questions)
        return [self.toy_answer(q, p) for q, p in zip(questions, passage_lists, strict=True)]

    @property
    def supports_scoring(self) -> bool:
        return self._scoring

    def _score_uncached(
        self, questions: Sequence[str], passage_lists: Sequence[Sequence[str]], answers: Sequence[str]
    ) -> list[float]:
        self.score_calls += 1
        self.score_prompts += len(questions)
        return [
            math.log(0.05 + 0.95 * token_f1(self.toy_answer(q, p), [a]))
            for q, p, a in zip(questions, passage_lists, answers, strict=True)
        ]


def make_toy_examples(n: int, n_passages: int = 5, seed: int = 0) -> list[QAExample]:
    """``n`` toy examples with ``n_passages`` candidates each; X's position is uniform over the candidates.

    Keywords and codes are distinct within an example; :attr:`QAExample.gold` marks X (for analysis).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if n_passages < 1:
        raise ValueError("n_passages must be >= 1")
    rng = random.Random(seed)
    examples = []
    for k in range(n):
        keywords = [f"{a}-{b}" for a, b in _distinct_pairs(rng, n_passages)]
        codes = [f"{a} {b}" for a, b in _distinct_pairs(rng, n_passages)]
        key = rng.randrange(n_passages)
        passages = [_PASSAGE.format(keyword=kw, code=c) for kw, c in zip(keywords, codes, strict=True)]
        examples.append(
            QAExample(
                id=f"toy-{seed}-{k}",
                question=f"What is the secret code of {keywords[key]}?",
                answers=[codes[key]],
                passages=passages,
                gold=[i == key for i in range(n_passages)],
                source="toy",
            )
        )
    return examples


def _distinct_pairs(rng: random.Random, n: int) -> list[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        pair = (rng.choice(_ADJECTIVES), rng.choice(_NOUNS))
        if pair not in pairs:
            pairs.add(pair)
            out.append(pair)
    return out


def toy_key_index(example: QAExample) -> int:
    """The position of the key passage X among the candidates."""
    for i, p in enumerate(example.passages):
        if _key_code(example.question, p) is not None:
            return i
    raise ValueError(f"{example.id!r} is not a toy example (no key passage)")


def toy_optimal_ids(example: QAExample) -> list[int]:
    """The unique shortest optimal sequence: ``[x, x]`` with ``x`` the key passage's index."""
    x = toy_key_index(example)
    return [x, x]
