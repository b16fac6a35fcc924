"""Model selection on validation: which epoch the run keeps, logged as `best_epoch`.

The selection itself is Lightning's: ModelCheckpoint (configs/callbacks/default.yaml `model_checkpoint`) keeps the
checkpoint of the best epoch by `optimized_metric`, and EarlyStopping (`early_stopping`, same monitor and mode) ends the
run once that metric has not improved for `patience` validations. SelectedEpoch only reports it: after each epoch's
validation it compares the monitored value with the best so far by ModelCheckpoint's rule (a strict improvement in
its `mode`) and, when better, records the epoch; it logs
`best_epoch` (so it is in the CSV log and in fusion.train's returned metrics) and prints a one-line summary at the end
of fit (selected epoch, its score, the epoch training stopped at). Its state travels in checkpoints, so a resumed run
reports the same epoch.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


class SelectedEpoch(L.Callback):
    def __init__(self):
        self.best_epoch: int | None = None  # epoch (0-based) whose checkpoint ModelCheckpoint keeps as best
        self.best_score: float | None = None  # its value of the checkpoint's monitor

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the epoch's metrics are logged and before ModelCheckpoint saves (Lightning calls checkpoint
        # callbacks last): the epoch becomes the best one by ModelCheckpoint's own rule, a strict improvement
        callback = trainer.checkpoint_callback
        if trainer.sanity_checking or callback is None or callback.monitor is None:
            return
        current = trainer.callback_metrics.get(callback.monitor)
        if current is None or not torch.isfinite(current):
            return
        best = self.best_score
        better = best is None or (float(current) < best if callback.mode == "min" else float(current) > best)
        if better:
            self.best_epoch, self.best_score = trainer.current_epoch, float(current)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best_epoch is not None:  # after this epoch's validation (and its on_validation_end)
            pl_module.log("best_epoch", torch.tensor(float(self.best_epoch)), rank_zero_only=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if self.best_epoch is None or callback is None:
            return
        trainer.callback_metrics["best_epoch"] = torch.tensor(float(self.best_epoch))
        early = trainer.early_stopping_callback is not None and trainer.early_stopping_callback.stopped_epoch > 0
        ran = f"{trainer.current_epoch} epochs trained" + (" (stopped early)" if early else "")
        message = f"selected epoch {self.best_epoch} ({callback.monitor}={self.best_score:.4f}); {ran}"
        if trainer.is_global_zero:
            log.info("%s", message)
            print(message)

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_epoch, self.best_score = state_dict["best_epoch"], state_dict["best_score"]
