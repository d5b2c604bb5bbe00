"""SPS -> SL -> RL in one call: the training recipe shared by ``bgm demo`` and the quality benchmark.

:func:`train_bridge` writes everything under one folder::

    silver.jsonl      silver passage sequences (appended as found; an interrupted run resumes)
    sl/, rl/          trainer logs and bridges (``final/``, ``best/`` with validation); their resume
                      ``checkpoint/`` is removed when the stage ends unless ``keep_checkpoints``
    bridge_sl/        the bridge after supervised training
    bridge/           the bridge after RL (absent when ``rl.max_steps == 0``); with ``validation_fraction`` the
                      RL step (the SL start included) with the best validation reward
    rl_selection.json which RL step ``bridge/`` holds and the validation rewards it was chosen by
    sl_recipe.json    the SL part of the recipe and the silver data ``bridge_sl/`` was trained with
    recipe.json       the recipe and the silver data the saved bridges were trained with

With ``reuse=True`` saved bridges whose ``recipe.json`` matches this call are loaded instead of retrained,
so a benchmark that stopped during evaluation restarts in seconds; a run that stopped during RL (or that
changes only the RL settings) starts RL again from the saved SL bridge instead of repeating SL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from bgm_model.config import BridgeConfig
from bgm_model.data import QAExample
from bgm_model.evaluation.verdict import BridgeNotBetterError, ValidationVerdict, validate_against_fixed
from bgm_model.model_card import TrainingRecord
from bgm_model.modeling import BridgeModel
from bgm_model.readers.base import Reader
from bgm_model.training.base_config import JsonConfigMixin
from bgm_model.training.rl_config import RLConfig
from bgm_model.training.silver import SilverConfig
from bgm_model.training.sl_config import SLConfig

logger = logging.getLogger(__name__)

SELECTION_FILE = "rl_selection.json"
SL_SELECTION_FILE = "sl_selection.json"
VERDICT_FILE = "validation_verdict.json"


C = TypeVar("C")


def replace_config(config: C, changes: Mapping[str, Any]) -> C:
    """A copy of the dataclass ``config`` with ``changes`` applied, nested ones included.

    A mapping given for a field that holds a dataclass changes only the keys it names (``{"sl": {"num_epochs":
    2}}`` keeps the recipe's other SL settings); unknown keys are dropped with a warning (forward compatible, as
    PEFT's configs load). The changed config validates itself as a new one would.
    """
    known = {f.name for f in dataclasses.fields(config) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - known)
    if unknown:
        logger.warning("Ignoring unknown %s keys %s (written by a newer bgm-bridge?)", type(config).__name__,
                       unknown)
    updates: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in known:
            continue
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(value, Mapping):
            value = replace_config(current, value)
        updates[name] = value
    return replace(config, **updates)  # type: ignore[type-var]


def _recipe_bridge() -> BridgeConfig:
    return BridgeConfig(max_passages=16, max_passage_tokens=96, relevance_prior=0.0, max_output_length=4)


def _recipe_silver() -> SilverConfig:
    return SilverConfig(max_length=2, top_m=4, secondary_extends=False)


def _recipe_sl() -> SLConfig:
    return SLConfig(num_epochs=8, learning_rate=1e-4, batch_size=8, soft_target_weight=0.0, freeze_encoder_layers=4)


def _recipe_rl() -> RLConfig:
    return RLConfig(max_steps=4, num_samples=4, batch_size=6, learning_rate=1e-5, eval_steps=0,
                    freeze_encoder_layers=4)


# What train_bridge decides itself for each stage (see BridgeRecipe.sl_config / rl_config), and settings it
# does not use (SL evaluates with ``reward``; RL runs ``max_steps`` steps): no command-line flag sets them.
_SL_DECIDED = ("output_dir", "dev_fraction", "resume", "seed", "eval_metric")
_RL_DECIDED = ("output_dir", "dev_fraction", "resume", "seed", "reward", "num_epochs")


@dataclass
class BridgeRecipe(JsonConfigMixin):
    """The three training stages composed: the bridge to warm-start, silver search, SL and RL settings.

    Each stage keeps its own config class (:class:`~bgm_model.config.BridgeConfig`,
    :class:`~bgm_model.training.silver.SilverConfig`, :class:`~bgm_model.training.sl_config.SLConfig`,
    :class:`~bgm_model.training.rl_config.RLConfig`), so a field added to one of them is a recipe setting, a
    ``bgm demo`` / quality-benchmark flag (``--sl-<field>``) and part of ``recipe.json`` without another edit.
    Defaults: the demo's, which fit a few minutes on 2 CPU cores. ``rl.max_steps`` is the number of PPO
    rollout steps (0 skips RL); the output folders, dev split, resume, seed and RL reward of the stages are
    set by :func:`train_bridge` (:meth:`sl_config`, :meth:`rl_config`).

    ``validation_fraction`` > 0 holds that share of the training questions (seeded) out of silver search, SL
    and RL, and they choose what ships: SL evaluates the greedy bridge on them after every epoch and
    ``bridge_sl/`` is the best epoch (a bridge that fits noisy silver sequences ever more closely can get
    worse on new questions); RL starts from it, evaluates at its start and every ``rl.eval_steps`` steps (0:
    start and end only) and ``bridge/`` is the best of those, so RL never ships a bridge that did worse on
    the held-out questions than the SL bridge it started from.

    Round-trips to JSON (:meth:`to_json` / :meth:`from_json`, nested, sorted); :meth:`from_dict` fills what a
    file leaves out with these defaults, stage by stage.
    """

    bridge: BridgeConfig = field(
        default_factory=_recipe_bridge,
        metadata={"help": "The bridge a warm start builds; max_passages grows to the most candidates of a "
                  "training question and max_output_length to at least silver max_length + 1."},
    )
    silver: SilverConfig = field(
        default_factory=_recipe_silver, metadata={"help": "Silver passage sequence search (the SL targets)."}
    )
    sl: SLConfig = field(
        default_factory=_recipe_sl,
        metadata={"help": "Supervised stage on the silver sequences.", "cli_exclude": _SL_DECIDED},
    )
    rl: RLConfig = field(
        default_factory=_recipe_rl,
        metadata={"help": "RL stage (PPO) against the frozen reader.", "cli_exclude": _RL_DECIDED,
                  "cli_help": {"max_steps": "PPO rollout steps (0 skips RL)."}},
    )
    reward: str = field(
        default="contains+0.5*f1",
        metadata={"help": "Downstream reward of silver search, RL and the validation choices "
                  "(bgm_model.rewards name or a weighted sum such as 'em+0.5*f1')."},
    )
    validation_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of the training questions held out of silver search, SL and RL to choose the "
                  "SL epoch and the RL step by (the SL start included); 0: the last epoch and step are kept."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the warm start, the validation split, SL and RL."}
    )
    require_better: bool = field(
        default=False,
        metadata={"help": "Refuse to ship a bridge that loses to the best fixed arrangement on the validation "
                  "questions beyond the 95% CI (needs validation_fraction > 0): the bridge goes to "
                  "<dir>.rejected and training raises BridgeNotBetterError naming that arrangement."},
    )

    def __post_init__(self) -> None:
        if self.require_better and self.validation_fraction <= 0:
            raise ValueError(
                "require_better compares the bridge with the fixed arrangements on held-out questions: "
                "set validation_fraction > 0 (e.g. 0.2)"
            )

    def bridge_config(self, max_passages: int = 0) -> BridgeConfig:
        """The warm start's config: ``bridge`` with room for ``max_passages`` and the silver sequences."""
        return replace(self.bridge, max_passages=max(self.bridge.max_passages, max_passages),
                       max_output_length=max(self.bridge.max_output_length, self.silver.max_length + 1))

    def sl_config(self, output_dir: str | os.PathLike[str]) -> SLConfig:
        """``sl`` as :func:`train_bridge` runs it: in ``output_dir``, no dev split of its own, no resume."""
        return replace(self.sl, output_dir=str(output_dir), dev_fraction=0.0, resume=False, seed=self.seed)

    def rl_config(self, output_dir: str | os.PathLike[str]) -> RLConfig:
        """``rl`` as :func:`train_bridge` runs it: also with the recipe's ``reward``."""
        return replace(self.rl, output_dir=str(output_dir), dev_fraction=0.0, resume=False, seed=self.seed,
                       reward=self.reward)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BridgeRecipe:  # type: ignore[override]
        """A recipe from its dict form; missing keys keep the defaults, unknown keys are dropped with a warning."""
        return replace_config(cls(), data)


@dataclass
class TrainedBridge:
    """Where the stages wrote their results, and how long each took (seconds)."""

    silver_path: Path
    sl_dir: Path
    rl_dir: Path | None
    reader_calls: int
    naive_reader_calls: int
    reused: bool
    seconds: dict[str, float] = field(default_factory=dict)
    rl_selection: dict[str, Any] | None = None
    """``{"kept_step": n, "validation_questions": n, "validation_reward": {step: reward}}`` when RL had
    validation questions."""
    sl_selection: dict[str, Any] | None = None
    """``{"kept_epoch": n, "validation_questions": n, "validation_reward": {epoch: reward}}`` when SL had
    validation questions."""
    validation_ids: tuple[str, ...] = ()
    """Ids of the training questions held out of silver search, SL and RL (empty without validation)."""
    verdict: ValidationVerdict | None = None
    """The shipped bridge against the best fixed arrangement on the validation questions (None without)."""

    @property
    def final_dir(self) -> Path:
        return self.rl_dir or self.sl_dir

    @property
    def validation_questions(self) -> int:
        """Training questions held out to choose the SL epoch and the RL step (0: none)."""
        selection = self.sl_selection or self.rl_selection
        return selection["validation_questions"] if selection else 0


def warm_start_bridge(recipe: BridgeRecipe, max_passages: int = 0) -> BridgeModel:
    """The bridge ``train_bridge`` trains by default: MiniLM warm start sized by ``recipe``.

    The warm start initialises new weights (cross-attention, ID embeddings) at random; they are seeded with
    ``recipe.seed`` so the same command trains the same bridge whatever ran before it in the process.
    """
    from bgm_model.training.base_trainer import seed_everything

    seed_everything(recipe.seed)
    return BridgeModel.from_encoder(config=recipe.bridge_config(max_passages))


def _silver_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_bridge(
    train_examples: Sequence[QAExample],
    reader: Reader,
    out_dir: str | Path,
    recipe: BridgeRecipe | None = None,
    *,
    reuse: bool = False,
    bridge: BridgeModel | None = None,
    keep_checkpoints: bool = False,
) -> TrainedBridge:
    """Synthesise silver sequences for ``train_examples``, train a bridge on them (SL), then PPO (RL).

    ``bridge`` is the model to train (default: a MiniLM warm start sized by ``recipe``); it is trained in place.
    ``keep_checkpoints``: keep each trainer's resume state (``sl/checkpoint``, ``rl/checkpoint``: bridge,
    optimizer, scheduler, ~3x the bridge's size). By default each is removed when its stage has ended, since
    the stages here never resume (``reuse`` starts again from the saved bridges instead).
    """
    from bgm_model.rewards import get_reward
    from bgm_model.training.checkpoints import BEST_DIR, CHECKPOINT_DIR
    from bgm_model.training.examples import split_dev
    from bgm_model.training.rl_trainer import RLTrainer
    from bgm_model.training.silver import read_silver, synthesize_to_file
    from bgm_model.training.sl_trainer import SLTrainer

    if not train_examples:
        raise ValueError("train_bridge needs training examples")
    recipe = recipe or BridgeRecipe()
    if not 0 <= recipe.validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {recipe.validation_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reward = get_reward(recipe.reward)
    seconds: dict[str, float] = {}
    fit, validation = list(train_examples), []
    if recipe.validation_fraction > 0:
        fit, validation = split_dev(fit, recipe.validation_fraction, recipe.seed)
        logger.info("holding out %d of %d training questions to choose the SL epoch and the RL step",
                    len(validation), len(train_examples))

    t = time.perf_counter()
    silver_path = out / "silver.jsonl"
    stats = synthesize_to_file(
        fit, reader, silver_path, reward=reward, set_aside_mismatched=True, config=recipe.silver,
    )
    wanted = {ex.id for ex in fit}
    silver = [s for s in read_silver(silver_path) if s.id in wanted]
    seconds["silver sequences"] = time.perf_counter() - t
    logger.info("silver sequences: %d (reader calls this run %d, naive greedy would make %d)",
                len(silver), stats.reader_calls, stats.naive_reader_calls)

    sl_dir, rl_dir = out / "bridge_sl", out / "bridge"
    stamp = {"recipe": recipe.to_dict(), "silver": _silver_digest(silver_path), "examples": sorted(wanted),
             "validation": sorted(ex.id for ex in validation)}
    stamp_path = out / "recipe.json"
    wants_rl = recipe.rl.max_steps > 0
    if (reuse and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
            and (sl_dir / "config.json").exists() and (not wants_rl or (rl_dir / "config.json").exists())):
        logger.info("reusing the bridges trained with this recipe and silver data in %s", out)
        return TrainedBridge(silver_path, sl_dir, rl_dir if wants_rl else None, stats.reader_calls,
                             stats.naive_reader_calls, reused=True, seconds=seconds,
                             rl_selection=_read_json(out / SELECTION_FILE),
                             sl_selection=_read_json(out / SL_SELECTION_FILE),
                             validation_ids=tuple(stamp["validation"]), verdict=_read_verdict(out))
    stamp_path.unlink(missing_ok=True)  # written again only once both bridges are saved
    (out / SELECTION_FILE).unlink(missing_ok=True)
    (out / VERDICT_FILE).unlink(missing_ok=True)

    # RL settings do not change the SL bridge, so its stamp leaves them out.
    sl_stamp = {**stamp, "recipe": {k: v for k, v in stamp["recipe"].items() if k != "rl"}}
    sl_stamp_path = out / "sl_recipe.json"
    t = time.perf_counter()
    if (reuse and sl_stamp_path.exists() and json.loads(sl_stamp_path.read_text()) == sl_stamp
            and (sl_dir / "config.json").exists()):
        logger.info("reusing the SL bridge trained with this recipe and silver data in %s", sl_dir)
        sl_selection = _read_json(out / SL_SELECTION_FILE)
        saved = BridgeModel.from_pretrained(sl_dir)
        if bridge is None:
            bridge = saved
        else:  # the caller's model is trained in place: give it the saved SL weights
            bridge.load_state_dict(saved.state_dict())
    else:
        sl_stamp_path.unlink(missing_ok=True)
        (out / SL_SELECTION_FILE).unlink(missing_ok=True)
        if bridge is None:
            bridge = warm_start_bridge(recipe, max(len(ex.passages) for ex in train_examples))
        sl_result = SLTrainer(
            bridge,
            recipe.sl_config(out / "sl"),
            train_data=silver,
            **({"dev_data": validation, "reader": reader, "reward": reward} if validation else {}),
        ).train()
        sl_selection = None
        if validation:
            rewards = {int(e["epoch"]): e["dev_reward"] for e in sl_result.evaluations}
            # SLTrainer's best/ is the first epoch with the top reward (no losses: the questions have no silver).
            kept = max(rewards, key=lambda epoch: (rewards[epoch], -epoch))
            sl_selection = {"kept_epoch": kept, "validation_questions": len(validation),
                            "validation_reward": {str(k): v for k, v in rewards.items()}}
            logger.info("SL: keeping epoch %d of %d (validation reward %.4f; the last epoch: %.4f)",
                        kept, recipe.sl.num_epochs, rewards[kept], rewards[max(rewards)])
            bridge.load_state_dict(BridgeModel.from_pretrained(out / "sl" / BEST_DIR).state_dict())
            (out / SL_SELECTION_FILE).write_text(json.dumps(sl_selection, indent=2))
        bridge.save_pretrained(sl_dir)
        sl_stamp_path.write_text(json.dumps(sl_stamp, indent=2))
        if not keep_checkpoints:
            _remove_checkpoint(out / "sl" / CHECKPOINT_DIR)
    seconds["SL"] = time.perf_counter() - t

    selection = None
    if wants_rl:
        t = time.perf_counter()
        result = RLTrainer(
            bridge,
            recipe.rl_config(out / "rl"),
            train_data=fit, reader=reader, reward=reward, dev_data=validation or None,
        ).train()
        if validation:
            assert result.best_step is not None  # RL evaluates its start whenever it has dev data
            selection = {"kept_step": result.best_step, "validation_questions": len(validation),
                         "validation_reward": {str(e["step"]): e["dev_reward"] for e in result.evaluations}}
            logger.info("RL: keeping step %d of %d (validation reward %.4f; the SL start: %.4f)",
                        result.best_step, recipe.rl.max_steps, result.best_metric,
                        result.evaluations[0]["dev_reward"])
            # The caller's model ends with the weights that ship, as it does without a validation set.
            bridge.load_state_dict(BridgeModel.from_pretrained(out / "rl" / BEST_DIR).state_dict())
        bridge.save_pretrained(rl_dir)
        if not keep_checkpoints:
            _remove_checkpoint(out / "rl" / CHECKPOINT_DIR)
        seconds["RL"] = time.perf_counter() - t
    else:
        logger.info("RL skipped (rl.max_steps=0)")
    if selection is not None:
        (out / SELECTION_FILE).write_text(json.dumps(selection, indent=2))
    verdict = None
    if validation:
        t = time.perf_counter()
        verdict = _validate(bridge, validation, reader, reward, recipe, rl_dir if wants_rl else sl_dir, out)
        seconds["validation verdict"] = time.perf_counter() - t
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return TrainedBridge(silver_path, sl_dir, rl_dir if wants_rl else None, stats.reader_calls,
                         stats.naive_reader_calls, reused=False, seconds=seconds, rl_selection=selection,
                         sl_selection=sl_selection, validation_ids=tuple(stamp["validation"]), verdict=verdict)


def _validate(
    bridge: BridgeModel, validation: list[QAExample], reader: Reader, reward: Any, recipe: BridgeRecipe,
    final_dir: Path, out: Path,
) -> ValidationVerdict:
    """Compare the shipped bridge with the fixed arrangements on the validation questions, record the result
    in its model card (and ``validation_verdict.json``), and with ``require_better`` refuse a losing bridge."""
    import datetime
    import shutil

    verdict = validate_against_fixed(bridge, validation, reader, reward=reward, seed=recipe.seed)
    logger.info("validation verdict: %s", verdict.sentence())
    bridge.model_card_data.add_training(TrainingRecord(
        stage="validation",
        settings={"reward": verdict.reward, "require_better": recipe.require_better, "ci_level": verdict.level},
        data={"validation_questions": verdict.questions},
        metrics={"verdict": verdict.sentence(), "best_fixed_arrangement": verdict.arrangement,
                 "paired_difference": verdict.difference, "ci": [verdict.ci_low, verdict.ci_high],
                 "table": list(verdict.table)},
        date=datetime.date.today().isoformat(),
    ))
    (out / VERDICT_FILE).write_text(json.dumps(verdict.to_dict(), indent=2))
    if recipe.require_better and verdict.verdict == "loses to":
        rejected = final_dir.with_name(final_dir.name + ".rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        bridge.save_pretrained(rejected)
        shutil.rmtree(final_dir, ignore_errors=True)
        raise BridgeNotBetterError(
            verdict,
            f"not shipping the bridge: {verdict.sentence()}. Use {verdict.arrangement} instead, or train with "
            f"more questions; the rejected bridge is in {rejected} (require_better=False keeps it)",
        )
    bridge.save_pretrained(final_dir)  # again, with the verdict in its model card
    return verdict


def _read_verdict(out: Path) -> ValidationVerdict | None:
    data = _read_json(out / VERDICT_FILE)
    if not data:
        return None
    return ValidationVerdict(**{**data, "table": tuple(data["table"])})


def _remove_checkpoint(path: Path) -> None:
    """Delete a trainer's resume checkpoint (and the temp folders of an interrupted write of it)."""
    import shutil

    for folder in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        if folder.exists():
            shutil.rmtree(folder)
            logger.info("removed the resume checkpoint %s (keep_checkpoints=False)", folder)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None
