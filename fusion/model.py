"""AlignmentModel: two modality towers (encoder -> projection head -> L2 norm) and a learnable temperature.

Data flow (ImageBind/CLIP style, one tower per modality; D = embed_dim, the heads' common output width, 512 in the
configs' model.embed_dim):
    genomics ids (B, R, H, L) --genomics_encoder--> (B, d_g) --genomics_head--> (B, D) --l2--> z_g
    brain input  (B, W, ...)  --brain_encoder-----> (B, d_b) --brain_head-----> (B, D) --l2--> z_b
Fused embedding of a subject with both modalities: fuse(z_g, z_b) = l2(z_g + z_b), the unit-norm bisector of the two
aligned views (equal weight to genome and brain; cosine to each view is the same). An encoder whose `freeze` is true
is a fixed feature extractor (genomics.freeze, the one rule); its head still trains. A tower whose encoder's features
come from the frozen-feature cache (fusion.feature_cache) is `precomputed`: its inputs are the (B, d) features.
Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from fusion.encoders import check_encoder
from fusion.losses import LogitScale
from genomics.freeze import Freezable


def fuse(z_g: Tensor, z_b: Tensor) -> Tensor:
    """(B, D), (B, D) unit vectors -> (B, D) unit vector l2(z_g + z_b)."""
    return F.normalize(z_g + z_b, dim=-1)


class Tower(nn.Module):
    """encoder -> head -> L2 normalisation. The encoder's own `freeze` attribute (absent = trainable) says whether it is
    frozen; a frozen encoder applies the one rule itself (genomics.freeze.Freezable)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        if getattr(encoder, "freeze", False) and not isinstance(encoder, Freezable):
            raise TypeError(f"{type(encoder).__name__} sets `freeze` but does not follow genomics.freeze.Freezable")
        self.encoder, self.head = encoder, head
        # True: the inputs are already this encoder's (B, d) outputs (fusion.feature_cache) and the encoder is skipped
        self.precomputed = False

    @property
    def frozen(self) -> bool:
        return bool(getattr(self.encoder, "freeze", False))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(x if self.precomputed else self.encoder(x)), dim=-1)  # (B, d) -> (B, D)


class AlignmentModel(nn.Module):
    def __init__(
        self,
        genomics_encoder: nn.Module,
        brain_encoder: nn.Module,
        genomics_head: Callable[..., nn.Module],  # head factory: head(in_dim=encoder.output_dim), with `output_dim`
        brain_head: Callable[..., nn.Module],
        logit_scale: LogitScale | None = None,
    ):
        super().__init__()
        check_encoder(genomics_encoder, "genomics")
        check_encoder(brain_encoder, "brain")
        self.genomics = Tower(genomics_encoder, genomics_head(in_dim=genomics_encoder.output_dim))
        self.brain = Tower(brain_encoder, brain_head(in_dim=brain_encoder.output_dim))
        widths = {"genomics": getattr(self.genomics.head, "output_dim", None)}
        widths["brain"] = getattr(self.brain.head, "output_dim", None)
        if len(set(widths.values())) != 1 or not isinstance(widths["genomics"], int):
            raise ValueError(f"the heads must share one int output_dim, the shared space's width; got {widths}")
        self.embed_dim: int = widths["genomics"]  # D, the width of every embedding the model returns
        self.logit_scale = logit_scale if logit_scale is not None else LogitScale()

    def forward(self, genomics: Tensor, brain: Tensor) -> dict[str, Tensor]:
        return {"genomics": self.genomics(genomics), "brain": self.brain(brain)}  # each (B, D)
