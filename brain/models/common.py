"""Shared pieces of the fMRI encoder adapters: window averaging.

Checkpoint reading and strict key matching live in genomics.checkpoints (shared with the Caduceus loader).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from genomics.freeze import Freezable


class WindowAveragingEncoder(Freezable):
    """Encoder base: (B, W, *window) -> (B, output_dim), the mean over windows of `embed` (B*W, *window) -> (B*W, d).

    `backbone` is the upstream-shaped network; `freeze` follows the one freeze rule (genomics.freeze: eval mode, no
    gradients, no autograd graph). A (B, *window) input (one window, no W axis) is accepted too. `chunk_size` bounds
    how many windows go through the backbone at once.
    """

    window_ndim: int  # number of axes of one window, e.g. 2 for (T, P)
    output_dim: int

    def __init__(self, backbone: nn.Module, output_dim: int, freeze: bool = False, chunk_size: int | None = None):
        super().__init__()
        self.backbone, self.output_dim = backbone, int(output_dim)
        self.chunk_size = chunk_size
        self.set_freeze(freeze)

    def embed(self, x: Tensor) -> Tensor:  # (N, *window) -> (N, d)
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == self.window_ndim + 1:
            x = x.unsqueeze(1)  # (B, 1, *window)
        if x.dim() != self.window_ndim + 2:
            raise ValueError(
                f"{type(self).__name__} expects (B, W, *window) with {self.window_ndim} window axes, "
                f"got {tuple(x.shape)}"
            )
        b, w = x.shape[:2]
        flat = x.flatten(0, 1)  # (B*W, *window)
        with self.no_grad_if_frozen():
            if self.chunk_size is None or flat.shape[0] <= self.chunk_size:
                z = self.embed(flat)  # (B*W, d)
            else:
                z = torch.cat([self.embed(c) for c in flat.split(self.chunk_size)])
        return z.view(b, w, -1).mean(dim=1)  # (B, d)
