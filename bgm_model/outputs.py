"""What the bridge returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BridgeResult:
    """The bridge's passage sequence for one query.

    ``ids[k]`` is the index (into the input passages) of the k-th passage to show the LLM; an index may repeat
    and the list may be empty. ``scores[k]`` is the probability the bridge gave ``ids[k]`` at that step.
    ``step_log_probs`` has one entry per decoding step *including the final end step* (so it is one longer
    than ``ids`` unless the output hit ``max_output_length``); the RL stage uses it.
    """

    ids: list[int]
    scores: list[float]
    step_log_probs: list[float] = field(default_factory=list)
    fallback: bool = False
    """True when the bridge failed and ``on_error='passthrough'`` returned the input order instead."""
    alternatives: list[tuple[int | None, float]] = field(default_factory=list)
    """Why each ID was chosen: ``alternatives[k]`` is the most probable *other* action at step ``k``, as
    ``(passage index, probability)``, or ``(None, probability)`` when that action is the end (stop here).
    Probabilities come from the same distribution as ``scores`` (the one the decoder chose from), so
    ``scores[k] + alternatives[k][1] <= 1``, and in greedy decoding ``alternatives[k][1] <= scores[k]``.
    ``(None, 0.0)`` when no other action was possible at that step, and for every entry of a
    ``fallback`` result. :class:`~bgm_model.BridgeModel` fills one entry per ID; results built without
    alternatives (other bridges, older code) leave it empty."""

    @property
    def log_prob(self) -> float:
        """Log-probability of the whole sequence (end step included)."""
        return float(sum(self.step_log_probs))

    def __len__(self) -> int:
        return len(self.ids)
