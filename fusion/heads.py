"""Projection heads from an encoder's output_dim into the shared latent space (out_dim wide: 512, the configs'
model.embed_dim; both towers' heads must agree, fusion.model.AlignmentModel checks).

ProjectionHead has the CaduceusProjector shape (Linear(in, 1024), GELU, Dropout, Linear(1024, out), LayerNorm), with an
optional non-affine BatchNorm on its input (as MAE's linear probe), which standardises fixed baseline features whose
scales differ by orders of magnitude (k-mer frequencies, Fisher-z correlations).
"""

from __future__ import annotations

from torch import Tensor, nn

from genomics.caduceus.embedding import CaduceusProjector


class ProjectionHead(nn.Module):
    """[BatchNorm (optional)] -> CaduceusProjector: Linear, GELU, Dropout, Linear, LayerNorm."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 1024,
        out_dim: int = 512,
        dropout: float = 0.1,
        input_norm: bool = False,  # BatchNorm1d(affine=False) on the input features
    ):
        super().__init__()
        # momentum=None: cumulative average of batch statistics, exact for the fixed features of frozen encoders
        self.input_norm = nn.BatchNorm1d(in_dim, affine=False, momentum=None) if input_norm else nn.Identity()
        self.projector = CaduceusProjector(in_dim, hidden_dim, out_dim, dropout)
        self.output_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.input_norm(x))  # (B, in) -> (B, out)
