"""What makes a training run safe to kill and exact to resume (kb/validation.md, "Resume guarantees").

    AtomicCheckpointIO   every checkpoint is written to a temporary file in the same folder, flushed to disk
                         (fsync) and renamed over the old one (os.replace): a kill mid-write leaves the previous
                         checkpoint, never a truncated one
    NonFiniteLossGuard   a NaN/Inf training loss stops the run before its backward pass (TrainingDivergedError
                         naming the step): no NaN reaches the weights, so no checkpoint with NaN is ever written and
                         the last good one stays in place
    ExactResume          random-number states (torch, numpy, python) go into every checkpoint and are restored at
                         the first training batch after a resume, where the uninterrupted run stood when it saved

With AlignmentDataModule's sampler position (its state_dict: the batches done in the epoch; EpochSampler is a
function of (seed, epoch)) and Lightning's own loop, optimiser and scheduler states, a run killed mid-epoch and
resumed from its last.ckpt ends bit-identical to an uninterrupted one on CPU with the same thread count
(tests/test_resilience.py). fusion.train adds all three to every run (callbacks(), plugins()).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fusion.errors import TrainingDivergedError

log = logging.getLogger(__name__)
RNG_KEY = "genobrain_rng_states"


def write_atomic(path: str | Path, write) -> None:
    """write(file object) into a temporary sibling, fsync, then os.replace onto path (and fsync the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a folder
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save is write_atomic (Lightning's own writes through fsspec, in place or via /tmp)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        write_atomic(path, lambda fh: torch.save(checkpoint, fh))


class NonFiniteLossGuard(L.Callback):
    """Stop the run at the first NaN/Inf training loss, before backward (all ranks agree under DDP)."""

    def __init__(self):
        self.batch_idx = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        callback = trainer.checkpoint_callback
        last = (callback.last_model_path or callback.best_model_path) if callback is not None else ""
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDivergedError(
            f"training loss is {loss.detach().float().cpu().flatten()[0].item()} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {self.batch_idx}): the run stopped before this step's update; "
            f"{kept} (resume with ckpt_path=...; lower model.optimizer.lr or check the inputs of that batch)"
        )


def rng_states() -> dict:
    """torch (CPU, and CUDA when used), numpy and python random states, as tensors and plain values (they load with
    torch.load(weights_only=True))."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },  # fmt: skip
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(L.Callback):
    """Random states saved with each checkpoint; restored at the first training batch after a resume (not at load:
    sanity checks and dataloader set-up run in between, and the uninterrupted run had done neither)."""

    def __init__(self):
        self._pending: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._pending = checkpoint.get(RNG_KEY)
        if self._pending is None:
            log.warning("the checkpoint has no random states (not written by fusion.train): the resume is not exact")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


def callbacks(existing: list) -> list:
    """The guard and the resume callback, unless the config already has them."""
    have = {type(c) for c in existing}
    return [cls() for cls in (NonFiniteLossGuard, ExactResume) if cls not in have]


def plugins(trainer_cfg) -> dict:
    """Trainer kwargs adding AtomicCheckpointIO, unless the trainer config names its own plugins."""
    if trainer_cfg.get("plugins"):
        log.warning("trainer.plugins is set: checkpoints are written by those plugins (not atomically by fusion)")
        return {}
    return {"plugins": [AtomicCheckpointIO()]}
