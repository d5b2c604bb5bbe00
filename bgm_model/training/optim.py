"""The optimiser and learning-rate schedule of both training stages."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["linear_schedule", "make_optimizer"]


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> Any:
    """Linear warm-up to the base learning rate, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # No decay on biases and LayerNorm weights (1-D tensors), as usual for transformers.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
