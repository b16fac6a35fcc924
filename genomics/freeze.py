"""The one freeze rule of the project's encoders (genomics and brain; fusion's towers read the same flag).

`freeze` is the one name: a constructor argument and an attribute of the encoder. A frozen encoder is a fixed feature
extractor, as a whole:
  - every parameter has requires_grad False (no gradients; the optimiser gets none of them),
  - it stays in eval mode when a parent module calls train() (dropout off, normalisation statistics fixed),
  - its forward passes run under `no_grad_if_frozen()`, so no activations are kept for a backward pass.
An encoder without a `freeze` attribute is trainable. Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

import torch
from torch import nn


class Freezable(nn.Module):
    """Base class of encoders with a `freeze` flag. Call `set_freeze(freeze)` at the end of __init__, once every
    parameter is registered, and run the forward passes inside `with self.no_grad_if_frozen():`."""

    freeze: bool = False

    def set_freeze(self, freeze: bool) -> None:
        self.freeze = bool(freeze)
        if self.freeze:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True):
        return super().train(mode and not self.freeze)  # a frozen encoder (and every submodule) stays in eval mode

    def no_grad_if_frozen(self):
        """Context manager: autograd off while frozen; unchanged (grad mode as the caller set it) otherwise."""
        return torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze)
