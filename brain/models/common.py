"""Shared pieces of the fMRI encoder adapters: safe checkpoint loading, strict key matching, window averaging.

Checkpoints are read with safetensors or `torch.load(weights_only=True)` only; pickled objects beyond tensors and
containers are refused (a few plain classes that Lightning / argparse checkpoints carry are allow-listed or mapped to
plain dicts). No code from a checkpoint is ever executed.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


_SAFE_GLOBALS = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    # Lightning's AttributeDict (a dict subclass, in `hyper_parameters`) is read back as a plain dict
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
]


def torch_load(path: str | Path):
    """`torch.load(weights_only=True)` with a small allow-list; a clear error instead of unpickling anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: cannot be read as a weights-only checkpoint ({err}). Only tensors, containers and a few plain "
            "classes are accepted; re-save the weights with torch.save(model.state_dict()) or safetensors"
        ) from err


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """A flat state dict from .safetensors or a torch file (weights-only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_strict(
    module: nn.Module,
    state: dict[str, Tensor],
    source: str,
    optional: Iterable[str] = (),  # key suffixes that may be absent (deterministic buffers)
) -> None:
    """load_state_dict with a readable error listing missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    optional = tuple(optional)
    missing = [k for k in own if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def head(items):
            return ", ".join(items[:6]) + (f" ... ({len(items)})" if len(items) > 6 else "")

        raise ValueError(
            f"{source} does not match the model: missing [{head(missing)}], unexpected [{head(unexpected)}], "
            f"shape mismatch [{head(shapes)}]"
        )
    module.load_state_dict(state, strict=False)


class WindowAveragingEncoder(nn.Module):
    """Encoder base: (B, W, *window) -> (B, output_dim), the mean over windows of `embed` (B*W, *window) -> (B*W, d).

    `backbone` is the upstream-shaped network; `freeze` keeps it in eval mode without gradients. A (B, *window) input
    (one window, no W axis) is accepted too. `chunk_size` bounds how many windows go through the backbone at once.
    """

    window_ndim: int  # number of axes of one window, e.g. 2 for (T, P)
    output_dim: int

    def __init__(self, backbone: nn.Module, output_dim: int, freeze: bool = False, chunk_size: int | None = None):
        super().__init__()
        self.backbone, self.output_dim = backbone, int(output_dim)
        self.freeze, self.chunk_size = bool(freeze), chunk_size
        if self.freeze:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

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
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if self.chunk_size is None or flat.shape[0] <= self.chunk_size:
                z = self.embed(flat)  # (B*W, d)
            else:
                z = torch.cat([self.embed(c) for c in flat.split(self.chunk_size)])
        return z.view(b, w, -1).mean(dim=1)  # (B, d)
