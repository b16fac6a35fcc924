"""Per-token and pooled Caduceus embeddings of both DNA strands, and the CaduceusProjector head.

References: kuleshov-group/caduceus `src/models/sequence/dna_embedding.py` (DNAEmbeddingModelCaduceus: RCPS stacking,
"conjoin" for Ph) and `vep_embeddings.py`; Schiff et al. 2024, Sec. 3.3 (post-hoc conjoining of Caduceus-Ph).

Strand layout (B, L, D, 2): [..., 0] is the forward strand in forward order; [..., 1] is the reverse-complement strand
in RC order (its position i reads base L-1-i of the input), for both
    RCPS (PS):  h (B, L, 2D) -> stack([h[..., :D], rc(h[..., D:])], -1)
    Ph:         stack([backbone(ids), backbone(rc(ids))], -1)            ("conjoined": two passes)
Strand-invariant pooling: mean over the non-[PAD] tokens of each strand (the RC strand's mask is the flipped mask),
then average the two strands -> (B, D), invariant under reverse complement of the input; or concatenate them -> (B, 2D)
(the halves swap under RC). Upstream averaged over all positions, pads included; we exclude [PAD] (padding and,
under the default N policy, N) so a region's embedding does not depend on how much padding its batch needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genomics.alphabet import PAD_ID, complement_table
from genomics.caduceus.rcps import stack_strands
from genomics.caduceus.tokenizer import reverse_complement_ids


class CaduceusEmbedder(nn.Module):
    """Backbone wrapper: ids (B, L) -> (B, L, D), or (B, L, D, 2) for RCPS and for conjoined Ph."""

    def __init__(self, backbone: nn.Module, conjoin: bool = False):
        super().__init__()
        self.backbone = backbone  # a genomics.caduceus.Caduceus
        self.rcps = backbone.config.rcps
        self.conjoin = conjoin
        self.d_model = backbone.config.d_model
        self.register_buffer(
            "complement", complement_table(complement_map=backbone.config.complement_map), persistent=False
        )  # (V,)

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.backbone(input_ids, return_dict=True).last_hidden_state  # (B, L, D) or (B, L, 2D)
        if self.rcps:
            return stack_strands(h)  # (B, L, D, 2)
        if not self.conjoin:
            return h  # (B, L, D)
        rc_ids = reverse_complement_ids(input_ids, self.complement)  # (B, L)
        h_rc = self.backbone(rc_ids, return_dict=True).last_hidden_state  # (B, L, D), RC order
        return torch.stack([h, h_rc], dim=-1)  # (B, L, D, 2)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of h (B, L, ...) over positions where mask (B, L) is True; all-masked rows give zeros."""
    m = mask.to(h.dtype).reshape(*mask.shape, *([1] * (h.ndim - 2)))  # (B, L, 1...)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, ...)


def pool_strands(h: Tensor, input_ids: Tensor, mode: str = "mean", pad_id: int = PAD_ID) -> Tensor:
    """Pool token embeddings over non-pad positions.

    h (B, L, D, 2) (strand layout above) -> mode "mean": (B, D) strand-invariant; "concat": (B, 2D) [fwd, rc];
    "strands": (B, D, 2). h (B, L, D) (one strand) -> (B, D) masked mean (not strand-invariant).
    """
    mask = input_ids != pad_id  # (B, L)
    if h.ndim == 3:
        return masked_mean(h, mask)  # (B, D)
    fwd = masked_mean(h[..., 0], mask)  # (B, D)
    rc = masked_mean(h[..., 1], mask.flip(1))  # (B, D), the RC strand is in RC order
    if mode == "mean":
        return (fwd + rc) / 2  # (B, D)
    if mode == "concat":
        return torch.cat([fwd, rc], dim=-1)  # (B, 2D)
    if mode == "strands":
        return torch.stack([fwd, rc], dim=-1)  # (B, D, 2)
    raise ValueError(f"mode must be 'mean', 'concat' or 'strands', got {mode!r}")


class CaduceusProjector(nn.Module):
    """Head for pooled Caduceus embeddings: Linear(in, 1024) -> GELU -> Dropout -> Linear(1024, 512) -> LayerNorm."""

    def __init__(self, in_dim: int, hidden_dim: int = 1024, out_dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.output_dim = out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, in_dim) -> (B, out_dim)
