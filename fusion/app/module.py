"""Lightning wrapper around fusion.model.AlignmentModel: the training loop's steps, logging and optimisation.

Thin on purpose: the model, loss and metrics are library objects; this file wires them to Lightning. Optimiser and
scheduler arrive as partials from Hydra (lightning-hydra-template style): AdamW, cosine decay with linear warm-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from fusion.losses import ClipLoss
from fusion.metrics import RetrievalMetrics
from fusion.model import AlignmentModel


def cosine_with_warmup(optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.0):
    """LambdaLR: linear warm-up over warmup_fraction of the steps, then cosine decay to min_lr_ratio * lr."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, embeddings' scalars and the logit scale (open_clip's exclusion rule)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class AlignmentModule(L.LightningModule):
    def __init__(
        self,
        net: AlignmentModel,
        optimizer: Callable,  # partial: optimizer(params) -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: scheduler(optimizer, total_steps=...) -> LR scheduler
        loss: nn.Module | None = None,
        weight_decay: float = 0.1,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss"])
        self.net, self.loss = net, loss if loss is not None else ClipLoss()
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_metrics, self.test_metrics = RetrievalMetrics(), RetrievalMetrics()

    def forward(self, genomics, brain):
        return self.net(genomics, brain)

    def on_fit_start(self) -> None:
        """Fit data-fitted encoders (e.g. tangent connectivity) on the training split; they keep a `fitted` flag."""
        for key, tower in (("genomics", self.net.genomics), ("brain", self.net.brain)):
            fitted = getattr(tower.encoder, "fitted", None)
            if hasattr(tower.encoder, "fit") and fitted is not None and not bool(fitted):
                tower.encoder.fit(item[key] for item in self.trainer.datamodule.fit_inputs())

    def training_step(self, batch, batch_idx):
        z = self.net(batch["genomics"], batch["brain"])
        loss = self.loss(z["genomics"], z["brain"], self.net.logit_scale())
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(batch["index"]))
        self.log("train/logit_scale", self.net.logit_scale(), batch_size=len(batch["index"]))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.net.logit_scale.clamp_()  # clamp to [0, ln 100] after each optimiser step

    def _eval_step(self, batch, metrics: RetrievalMetrics, stage: str):
        z = self.net(batch["genomics"], batch["brain"])
        loss = self.loss(z["genomics"], z["brain"], self.net.logit_scale())
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=len(batch["index"]))
        metrics.update(z["genomics"], z["brain"], batch["index"])

    def _eval_epoch_end(self, metrics: RetrievalMetrics, stage: str):
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)  # equal on all ranks
        metrics.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end(self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end(self.test_metrics, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=param_groups(self.net, self.hparams.weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

