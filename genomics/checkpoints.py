"""Safe checkpoint I/O shared by the genomics and brain encoders: reading, strict key matching, hashing.

Checkpoints are read with safetensors or `torch.load(weights_only=True)` only; pickled objects beyond tensors and
containers are refused (a few plain classes that Lightning / argparse checkpoints carry are allow-listed or mapped to
plain dicts). No code from a checkpoint is ever executed.

Hugging Face folder layout (Caduceus, BrainLM): model.safetensors, else pytorch_model.bin, or their sharded form
(`<name>.index.json` with a weight_map naming the shard files).
Strict matching (`check_state_dict`, `load_strict`) raises CheckpointMismatchError, a ValueError naming the missing,
unexpected and mis-shaped keys.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from genomics.errors import GenomicsInputError

SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME = "model.safetensors", "pytorch_model.bin"

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


class CheckpointMismatchError(GenomicsInputError):
    """A checkpoint's keys or shapes do not fit the model."""


def torch_load(path: str | Path):
    """`torch.load(weights_only=True)` with a small allow-list; a clear error instead of unpickling anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise GenomicsInputError(
            f"{path}: cannot be read as a weights-only checkpoint ({err}). Only tensors, containers and a few plain "
            "classes are accepted; re-save the weights with torch.save(model.state_dict()) or safetensors"
        ) from err


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """A flat state dict (on the CPU) from .safetensors or a torch file (weights-only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise GenomicsInputError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def read_hf_weights(folder: str | Path) -> dict[str, Tensor]:
    """The state dict of a Hugging Face model folder: model.safetensors, else pytorch_model.bin; shards are merged."""
    folder = Path(folder)
    for name in (SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME):
        if (folder / name).is_file():
            return load_tensors(folder / name)
        index = folder / f"{name}.index.json"
        if index.is_file():
            state: dict[str, Tensor] = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                state.update(load_tensors(folder / shard))
            return state
    raise FileNotFoundError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {PT_WEIGHTS_NAME} (or a sharded index) found")


def write_hf_weights(state: Mapping[str, Tensor], folder: str | Path, safe: bool = True) -> Path:
    """Write `state` (CPU, contiguous) as folder/model.safetensors (metadata format=pt) or folder/pytorch_model.bin."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if safe:
        from safetensors.torch import save_file

        path = Path(folder) / SAFE_WEIGHTS_NAME
        save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        path = Path(folder) / PT_WEIGHTS_NAME
        torch.save(tensors, path)
    return path


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with `prefix`, with the prefix removed (the others are dropped)."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _names(items: Iterable[str], limit: int = 20) -> str:
    items = sorted(items)
    return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def check_state_dict(
    expected: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    source: str = "checkpoint",
    target: str = "the model",
    optional: Collection[str] = (),  # keys of `expected` that may be absent from `state`
) -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected and mis-shaped key (checkpoint vs model)."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source} does not match {target}"
            + (f"; missing keys: {_names(missing)}" if missing else "")
            + (f"; unexpected keys: {_names(unexpected)}" if unexpected else "")
            + (f"; shape mismatch (checkpoint vs model): {'; '.join(sorted(shapes))}" if shapes else "")
        )


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    source: str,
    optional: Iterable[str] = (),  # key suffixes that may be absent (deterministic buffers)
) -> None:
    """load_state_dict with a readable CheckpointMismatchError listing missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    suffixes = tuple(optional)
    check_state_dict(own, state, source, optional={k for k in own if suffixes and k.endswith(suffixes)})
    module.load_state_dict(dict(state), strict=False)  # completeness was checked above


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
