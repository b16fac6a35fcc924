"""Callbacks that test processes add to a real `python -m fusion.train` child (PYTHONPATH=tests,
`+callbacks.x._target_=fault_hooks.Name`): kill it at a chosen step, dump its final metrics. Not a test module."""

from __future__ import annotations

import json
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process at the end of the training batch that completes optimiser step `step` (before that
    step's checkpoint: Lightning runs checkpoint callbacks last)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInValidation(L.Callback):
    """SIGKILL this process in the middle of the validation loop that follows training epoch `epoch` (after the
    epoch's last step checkpoint, before validation has logged anything the checkpoint callback could use)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpMetrics(L.Callback):
    """Write trainer.callback_metrics (full precision) to `path` when testing ends."""

    def __init__(self, path: str):
        self.path = path

    def on_test_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        with open(self.path, "w") as fh:
            json.dump({"metrics": metrics, "global_step": trainer.global_step}, fh)
