"""SPS -> SL -> RL in one call: the training recipe shared by ``bgm demo`` and the quality benchmark.

:func:`train_bridge` writes everything under one folder::

    silver.jsonl      silver passage sequences (appended as found; an interrupted run resumes)
    sl/, rl/          trainer logs and checkpoints
    bridge_sl/        the bridge after supervised training
    bridge/           the bridge after RL (absent when ``rl_steps == 0``); with ``validation_fraction`` the
                      RL step (the SL start included) with the best validation reward
    rl_selection.json which RL step ``bridge/`` holds and the validation rewards it was chosen by
    sl_recipe.json    the SL part of the recipe and the silver data ``bridge_sl/`` was trained with
    recipe.json       the recipe and the silver data the saved bridges were trained with

With ``reuse=True`` saved bridges whose ``recipe.json`` matches this call are loaded instead of retrained,
so a benchmark that stopped during evaluation restarts in seconds; a run that stopped during RL (or that
changes only the RL settings) starts RL again from the saved SL bridge instead of repeating SL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bgm_model.config import BridgeConfig
from bgm_model.data import QAExample
from bgm_model.modeling import BridgeModel
from bgm_model.readers.base import Reader

logger = logging.getLogger(__name__)

SELECTION_FILE = "rl_selection.json"
SL_SELECTION_FILE = "sl_selection.json"


@dataclass
class BridgeRecipe:
    """Sizes of the three training stages (defaults: the demo's, which fit a few minutes on 2 CPU cores).

    ``validation_fraction`` > 0 holds that share of the training questions (seeded) out of silver search, SL
    and RL, and they choose what ships: SL evaluates the greedy bridge on them after every epoch and
    ``bridge_sl/`` is the best epoch (a bridge that fits noisy silver sequences ever more closely can get
    worse on new questions); RL starts from it, evaluates at its start and every ``rl_eval_steps`` steps (0:
    start and end only) and ``bridge/`` is the best of those, so RL never ships a bridge that did worse on
    the held-out questions than the SL bridge it started from.
    """

    reward: str = "contains+0.5*f1"
    silver_max_length: int = 2
    silver_top_m: int | None = 4
    silver_secondary_extends: bool = False
    max_passages: int = 16
    max_passage_tokens: int = 96
    sl_epochs: int = 8
    sl_learning_rate: float = 1e-4
    sl_batch_size: int = 8
    sl_soft_target_weight: float = 0.0
    freeze_encoder_layers: int = 4
    relevance_prior: float = 0.0
    validation_fraction: float = 0.0
    rl_steps: int = 4
    rl_samples: int = 4
    rl_batch_size: int = 6
    rl_learning_rate: float = 1e-5
    rl_eval_steps: int = 0
    seed: int = 0


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
    from bgm_model.training._common import seed_everything

    seed_everything(recipe.seed)
    return BridgeModel.from_encoder(config=BridgeConfig(
        max_passages=max(recipe.max_passages, max_passages),
        max_passage_tokens=recipe.max_passage_tokens,
        relevance_prior=recipe.relevance_prior,
        max_output_length=max(4, recipe.silver_max_length + 1),
    ))


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
) -> TrainedBridge:
    """Synthesise silver sequences for ``train_examples``, train a bridge on them (SL), then PPO (RL).

    ``bridge`` is the model to train (default: a MiniLM warm start sized by ``recipe``); it is trained in place.
    """
    from bgm_model.rewards import get_reward
    from bgm_model.training._common import BEST_DIR, split_dev
    from bgm_model.training.rl_config import RLConfig
    from bgm_model.training.rl_trainer import RLTrainer
    from bgm_model.training.silver import SilverConfig, read_silver, synthesize_to_file
    from bgm_model.training.sl_config import SLConfig
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
        fit, reader, silver_path, reward=reward, set_aside_mismatched=True,
        config=SilverConfig(max_length=recipe.silver_max_length, top_m=recipe.silver_top_m,
                            secondary_extends=recipe.silver_secondary_extends),
    )
    wanted = {ex.id for ex in fit}
    silver = [s for s in read_silver(silver_path) if s.id in wanted]
    seconds["silver sequences"] = time.perf_counter() - t
    logger.info("silver sequences: %d (reader calls this run %d, naive greedy would make %d)",
                len(silver), stats.reader_calls, stats.naive_reader_calls)

    sl_dir, rl_dir = out / "bridge_sl", out / "bridge"
    stamp = {"recipe": asdict(recipe), "silver": _silver_digest(silver_path), "examples": sorted(wanted),
             "validation": sorted(ex.id for ex in validation)}
    stamp_path = out / "recipe.json"
    wants_rl = recipe.rl_steps > 0
    if (reuse and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
            and (sl_dir / "config.json").exists() and (not wants_rl or (rl_dir / "config.json").exists())):
        logger.info("reusing the bridges trained with this recipe and silver data in %s", out)
        return TrainedBridge(silver_path, sl_dir, rl_dir if wants_rl else None, stats.reader_calls,
                             stats.naive_reader_calls, reused=True, seconds=seconds,
                             rl_selection=_read_json(out / SELECTION_FILE),
                             sl_selection=_read_json(out / SL_SELECTION_FILE),
                             validation_ids=tuple(stamp["validation"]))
    stamp_path.unlink(missing_ok=True)  # written again only once both bridges are saved
    (out / SELECTION_FILE).unlink(missing_ok=True)

    # RL settings do not change the SL bridge, so its stamp leaves them out.
    sl_stamp = {**stamp, "recipe": {k: v for k, v in stamp["recipe"].items() if not k.startswith("rl_")}}
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
            SLConfig(output_dir=str(out / "sl"), num_epochs=recipe.sl_epochs, learning_rate=recipe.sl_learning_rate,
                     batch_size=recipe.sl_batch_size, dev_fraction=0.0, resume=False, seed=recipe.seed,
                     soft_target_weight=recipe.sl_soft_target_weight,
                     freeze_encoder_layers=recipe.freeze_encoder_layers),
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
                        kept, recipe.sl_epochs, rewards[kept], rewards[max(rewards)])
            bridge.load_state_dict(BridgeModel.from_pretrained(out / "sl" / BEST_DIR).state_dict())
            (out / SL_SELECTION_FILE).write_text(json.dumps(sl_selection, indent=2))
        bridge.save_pretrained(sl_dir)
        sl_stamp_path.write_text(json.dumps(sl_stamp, indent=2))
    seconds["SL"] = time.perf_counter() - t

    selection = None
    if wants_rl:
        t = time.perf_counter()
        result = RLTrainer(
            bridge,
            RLConfig(output_dir=str(out / "rl"), max_steps=recipe.rl_steps, num_samples=recipe.rl_samples,
                     batch_size=recipe.rl_batch_size, learning_rate=recipe.rl_learning_rate, dev_fraction=0.0,
                     resume=False, seed=recipe.seed, reward=recipe.reward,
                     freeze_encoder_layers=recipe.freeze_encoder_layers, eval_steps=recipe.rl_eval_steps),
            train_data=fit, reader=reader, reward=reward, dev_data=validation or None,
        ).train()
        if validation:
            assert result.best_step is not None  # RL evaluates its start whenever it has dev data
            selection = {"kept_step": result.best_step, "validation_questions": len(validation),
                         "validation_reward": {str(e["step"]): e["dev_reward"] for e in result.evaluations}}
            logger.info("RL: keeping step %d of %d (validation reward %.4f; the SL start: %.4f)",
                        result.best_step, recipe.rl_steps, result.best_metric,
                        result.evaluations[0]["dev_reward"])
            # The caller's model ends with the weights that ship, as it does without a validation set.
            bridge.load_state_dict(BridgeModel.from_pretrained(out / "rl" / BEST_DIR).state_dict())
        bridge.save_pretrained(rl_dir)
        seconds["RL"] = time.perf_counter() - t
    else:
        logger.info("RL skipped (rl_steps=0)")
    if selection is not None:
        (out / SELECTION_FILE).write_text(json.dumps(selection, indent=2))
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return TrainedBridge(silver_path, sl_dir, rl_dir if wants_rl else None, stats.reader_calls,
                         stats.naive_reader_calls, reused=False, seconds=seconds, rl_selection=selection,
                         sl_selection=sl_selection, validation_ids=tuple(stamp["validation"]))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None
