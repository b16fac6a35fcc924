"""Contrastive objectives, the `loss` config group: CLIP/InfoNCE (open_clip's ClipLoss) and SigLIP (Zhai et al. 2023,
"Sigmoid Loss for Language Image Pre-Training"; open_clip's SigLipLoss).

Every loss is called as loss(z_g (B, D), z_b (B, D), logit_scale ()) -> scalar, with L2-normalised genomics and brain
embeddings; the positive pair of row i is column i (the same subject).
ClipLoss: cross-entropy over the (B, B) logits scale * g @ b.T in both directions, genome->brain (rows) weighted by
    `weight_g2b` and brain->genome (columns) by 1 - weight_g2b. Under DDP each rank scores its own rows against all
    ranks' columns (local loss + gather with grad), labels arange(B) + rank * B: numerically the global loss.
SigLipLoss: a binary problem per pair, -1/B sum_ij log sigmoid(y_ij (t g_i . b_j + b)), y_ij = 1 on the diagonal
    and -1 elsewhere; learnable bias b (init -10, held by the loss) and the model's temperature t = exp(t') (init
    t' = ln 10, set by configs/loss/siglip.yaml). Each term serves both directions at once, so there is no direction
    weight. Under DDP each rank's rows meet every rank's columns one (B, B) block at a time (all-gather with grad, then
    one block per rank; positives only in the rank's own block): the sum is the global loss, never a (B, world*B)
    matrix.
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
        if not 0.0 <= weight_g2b <= 1.0:
            raise ValueError(
                f"loss.weight_g2b is {weight_g2b}: the weight of genome->brain against brain->genome, in [0, 1]"
            )
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


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss with a learnable bias; the temperature is the model's LogitScale (SigLIP: init ln 10)."""

    def __init__(self, init_logit_bias: float = -10.0):
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))  # b: offsets the B^2 - B negatives

    def block(self, z_g: Tensor, z_b: Tensor, logit_scale: Tensor, positives: bool) -> Tensor:
        """Sum of -log sigmoid(y * logits) over one (B, B') block; positives on its diagonal when `positives`."""
        logits = logit_scale * z_g @ z_b.T + self.logit_bias  # (B, B')
        labels = -torch.ones_like(logits)
        if positives:
            labels = labels + 2 * torch.eye(*logits.shape, device=logits.device, dtype=logits.dtype)
        return -F.logsigmoid(labels * logits).sum()

    def forward(self, z_g: Tensor, z_b: Tensor, logit_scale: Tensor) -> Tensor:
        rank, size = world()
        all_b = gather_with_grad(z_b)  # (world*B, D), ranks in order
        total = z_g.new_zeros(())
        for other, block in enumerate(all_b.chunk(size)):  # (B, D) each: one rank's brain embeddings
            total = total + self.block(z_g, block, logit_scale, positives=other == rank)
        return total / z_g.shape[0]  # / B, the local batch: the mean over ranks is the global loss
