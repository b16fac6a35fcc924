"""AlignmentModel: two modality towers (encoder -> projection head -> L2 norm) and a learnable temperature.

Data flow (ImageBind/CLIP style, one tower per modality):
    genomics ids (B, R, H, L) --genomics_encoder--> (B, d_g) --genomics_head--> (B, 512) --l2--> z_g
    brain input  (B, W, ...)  --brain_encoder-----> (B, d_b) --brain_head-----> (B, 512) --l2--> z_b
Fused embedding of a subject with both modalities: fuse(z_g, z_b) = l2(z_g + z_b), the unit-norm bisector of the two
aligned views (equal weight to genome and brain; cosine to each view is the same). Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fusion.encoders import check_encoder
from fusion.losses import LogitScale


def fuse(z_g: Tensor, z_b: Tensor) -> Tensor:
    """(B, D), (B, D) unit vectors -> (B, D) unit vector l2(z_g + z_b)."""
    return F.normalize(z_g + z_b, dim=-1)


class Tower(nn.Module):
    """encoder -> head -> L2 normalisation; `locked` freezes the encoder (eval mode, no gradients)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, locked: bool = False):
        super().__init__()
        self.encoder, self.head, self.locked = encoder, head, locked
        if locked:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.locked:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.locked):
            feats = self.encoder(x)  # (B, d)
        return F.normalize(self.head(feats), dim=-1)  # (B, 512)


class AlignmentModel(nn.Module):
    def __init__(
        self,
        genomics_encoder: nn.Module,
        brain_encoder: nn.Module,
        genomics_head: Callable[..., nn.Module],  # head factory: head(in_dim=encoder.output_dim)
        brain_head: Callable[..., nn.Module],
        lock_genomics: bool = False,
        lock_brain: bool = False,
        logit_scale: LogitScale | None = None,
    ):
        super().__init__()
        check_encoder(genomics_encoder, "genomics")
        check_encoder(brain_encoder, "brain")
        self.genomics = Tower(genomics_encoder, genomics_head(in_dim=genomics_encoder.output_dim), lock_genomics)
        self.brain = Tower(brain_encoder, brain_head(in_dim=brain_encoder.output_dim), lock_brain)
        self.logit_scale = logit_scale if logit_scale is not None else LogitScale()

    def forward(self, genomics: Tensor, brain: Tensor) -> dict[str, Tensor]:
        return {"genomics": self.genomics(genomics), "brain": self.brain(brain)}  # each (B, 512)
