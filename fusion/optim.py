"""Optimisation rules shared by every training loop of the project (alignment and Caduceus MLM pretraining).

References: open_clip `main.py` (no weight decay on gains, biases and the logit scale); mamba_ssm `Mamba.__init__`
(`A_log` and `D` are marked `_no_weight_decay`); Loshchilov & Hutter 2019 (AdamW); a linear warm-up then cosine decay
(Goyal et al. 2017; Loshchilov & Hutter 2017). Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """The one exclusion rule: 1-D tensors (biases, norm gains), the logit scale, and parameters marked
    `_no_weight_decay` (the SSM's A_log and D, which are 2-D and 1-D)."""
    return p.ndim < 2 or "logit_scale" in name or getattr(p, "_no_weight_decay", False)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: trainable parameters once each (weight-tied ones too), split by no_weight_decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():  # named_parameters() yields a shared parameter once
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0):
    """LambdaLR: linear warm-up over warmup_fraction of the steps, then cosine decay to min_lr_ratio * lr."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
