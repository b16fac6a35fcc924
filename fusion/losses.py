"""Contrastive objectives (CLIP/InfoNCE as in open_clip's ClipLoss).

ClipLoss: symmetric cross-entropy over the (B, B) logit matrix scale * g @ b.T between L2-normalised genomics and brain
embeddings; the positive pair of row i is column i (the same subject). Under DDP each rank scores its own rows against
all ranks' columns (local loss + gather with grad), labels arange(B) + rank * B: numerically the global loss.
LogitScale: learnable log temperature, initialised at ln(1/0.07) and clamped to [0, ln 100] after each optimiser step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.distributed import gather_with_grad, world


class LogitScale(nn.Module):
    def __init__(self, init: float = math.log(1 / 0.07), max_log: float = math.log(100.0)):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init)))
        self.max_log = max_log

    def forward(self) -> Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(0.0, self.max_log)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE; `weight_g2b` in [0, 1] weights the genome->brain direction (0.5 = symmetric)."""

    def __init__(self, weight_g2b: float = 0.5):
        super().__init__()
        self.weight_g2b = weight_g2b

    def forward(self, z_g: Tensor, z_b: Tensor, logit_scale: Tensor) -> Tensor:
        rank, _ = world()
        all_g, all_b = gather_with_grad(z_g), gather_with_grad(z_b)  # (world*B, D)
        logits_g2b = logit_scale * z_g @ all_b.T  # (B, world*B)
        logits_b2g = logit_scale * z_b @ all_g.T  # (B, world*B)
        labels = torch.arange(z_g.shape[0], device=z_g.device) + rank * z_g.shape[0]
        loss_g2b = F.cross_entropy(logits_g2b, labels)
        loss_b2g = F.cross_entropy(logits_b2g, labels)
        return self.weight_g2b * loss_g2b + (1 - self.weight_g2b) * loss_b2g  # (a + b) / 2 when symmetric
