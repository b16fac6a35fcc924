"""Projection heads from an encoder's output_dim into the shared latent space (out_dim wide: 512, the configs'
model.embed_dim; both towers' heads must agree, fusion.model.AlignmentModel checks).

ProjectionHead has the CaduceusProjector shape (Linear(in, hidden), GELU, Dropout, Linear(hidden, out), LayerNorm), or
with hidden_dim=None a linear map (Linear(in, out), LayerNorm), with an optional non-affine BatchNorm on its input (as
MAE's linear probe), which standardises fixed baseline features whose scales differ by orders of magnitude (k-mer
frequencies, Fisher-z correlations). Regularisers for small cohorts act on the (standardised) input features during
training only: Gaussian feature noise of std `input_noise` (noise injection, Bishop 1995) and feature dropout
`input_dropout` (Srivastava et al. 2014).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genomics.caduceus.embedding import CaduceusProjector


class ProjectionHead(nn.Module):
    """[BatchNorm] -> [noise, dropout while training] -> CaduceusProjector, or Linear + LayerNorm (hidden_dim=None)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int | None = 1024,  # width of the hidden layer; None = a linear head (no hidden layer)
        out_dim: int = 512,
        dropout: float = 0.5,  # dropout after the hidden layer's GELU (configs/head/projection.yaml's default)
        input_norm: bool = False,  # BatchNorm1d(affine=False) on the input features
        input_noise: float = 0.0,  # std of Gaussian noise added to the (normalised) input features while training
        input_dropout: float = 0.0,  # dropout on the (normalised) input features
    ):
        super().__init__()
        if input_noise < 0:
            raise ValueError(f"head.input_noise is {input_noise}: a standard deviation, >= 0")
        # momentum=None: cumulative average of batch statistics, exact for the fixed features of frozen encoders
        self.input_norm = nn.BatchNorm1d(in_dim, affine=False, momentum=None) if input_norm else nn.Identity()
        self.input_noise = float(input_noise)
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout else nn.Identity()
        if hidden_dim is None:
            self.projector = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
        else:
            self.projector = CaduceusProjector(in_dim, hidden_dim, out_dim, dropout)
        self.output_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_norm(x)  # (B, in)
        if self.training and self.input_noise > 0:
            x = x + self.input_noise * torch.randn_like(x)
        return self.projector(self.input_dropout(x))  # (B, in) -> (B, out)
