"""The two figures every evaluation draws: methods with their 95% CI, and the training curves (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_methods", "plot_training_curves"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("Plots need matplotlib: pip install 'bgm-bridge[train]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_methods(path: str | Path, report: Any, metric: str = "contains", title: str | None = None) -> Path:
    """One bar per method: ``metric`` with its bootstrap 95% CI as error bars and the value written on the
    bar, beside the mean prompt tokens. ``report``: an :class:`~bgm_model.evaluation.EvaluationReport`."""
    plt = _pyplot()
    methods = report.methods
    names = [m.name for m in methods]
    values = [getattr(m, metric) for m in methods]
    intervals = [m.interval(metric) for m in methods]
    errors = [[max(0.0, v - lo) for v, (lo, _) in zip(values, intervals)],
              [max(0.0, hi - v) for v, (_, hi) in zip(values, intervals)]]  # fmt: skip
    colors = ["tab:orange" if n.startswith("BGM") else "tab:blue" for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * len(names) + 1.6))
    axes[0].barh(names, values, xerr=errors, color=colors, capsize=2)
    for y, (v, (_, hi)) in enumerate(zip(values, intervals)):
        axes[0].text(max(v, hi) + 0.015, y, f"{v:.3f}", va="center", fontsize=8)  # right of the error bar
    axes[0].set(title=title or f"dev: {metric} (95% CI)", xlim=(0, 1.16), xticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    tokens = [m.prompt_tokens for m in methods]
    axes[1].barh(names, tokens, color=colors)
    for y, t in enumerate(tokens):
        axes[1].text(t, y, f" {t:.0f}", va="center", fontsize=8)
    axes[1].set(title="mean prompt tokens", xlim=(0, 1.12 * max(tokens, default=0) or 1))  # room for labels
    axes[1].set_yticklabels([])
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training_curves(path: str | Path, sl_log: Sequence[dict[str, Any]], rl_log: Sequence[dict[str, Any]]) -> Path:
    """SL loss per optimizer step; RL mean reward per rollout step with the KL to the SL policy on its own axis.

    The logs are the trainers' ``log.jsonl`` records (those with ``loss`` / ``reward``); steps are whole
    numbers, also when a stage logged only one. A stage that logged nothing says so in its panel."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    plt = _pyplot()
    sl = [r for r in sl_log if "loss" in r]
    rl = [r for r in rl_log if "reward" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if sl:
        axes[0].plot([r.get("step", i) for i, r in enumerate(sl)], [r["loss"] for r in sl], marker="o",
                     markersize=3)
    else:
        _no_data(axes[0], "no SL step logged")
    axes[0].set(title="SL: teacher-forcing loss", xlabel="optimizer step", ylabel="loss")
    if rl:
        steps = [r.get("step", i) for i, r in enumerate(rl)]
        axes[1].plot(steps, [r["reward"] for r in rl], marker="o", markersize=3, color="tab:blue",
                     label="mean reward")
        axes[1].set_ylabel("mean reward", color="tab:blue")
        axes[1].tick_params(axis="y", colors="tab:blue")
        if any("kl" in r for r in rl):
            kl_axis = axes[1].twinx()
            kl_axis.plot(steps, [r.get("kl") for r in rl], marker="s", markersize=5, linestyle="--",
                         color="tab:red", label="KL to SL")
            kl_axis.set_ylabel("KL to SL", color="tab:red")
            kl_axis.tick_params(axis="y", colors="tab:red")
            kl_axis.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # no "1e-5" multiplier over the title
            # the reward on top where the two cross (the twin axis is drawn over the first by default)
            axes[1].set_zorder(kl_axis.get_zorder() + 1)
            axes[1].patch.set_visible(False)
            lines = axes[1].get_lines() + kl_axis.get_lines()
            axes[1].legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
    else:
        _no_data(axes[1], "no RL step logged (RL skipped?)")
    axes[1].set(title="RL: reward of sampled sequences", xlabel="rollout step")
    for ax, log in zip(axes, (sl, rl)):
        if not log:
            continue
        # min_n_ticks=1: a run of one step gets the tick "1", not 0.95 ... 1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(log) == 1:
            step = log[0].get("step", 0)
            ax.set_xlim(step - 1, step + 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])
