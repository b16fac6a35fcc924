"""Lightning wrapper around fusion.model.AlignmentModel: the training loop's steps, logging and optimisation.

Thin on purpose: the model, loss and metrics are library objects; this file wires them to Lightning. The loss comes
from the `loss` config group; optimiser and scheduler arrive as partials from Hydra (lightning-hydra-template style):
AdamW, cosine decay with linear warm-up.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from torch import nn

from fusion.metrics import RetrievalMetrics
from fusion.model import AlignmentModel
from fusion.optim import param_groups


class AlignmentModule(L.LightningModule):
    def __init__(
        self,
        net: AlignmentModel,
        loss: nn.Module,  # loss(z_g, z_b, logit_scale) -> scalar: the `loss` group (e.g. fusion.losses.ClipLoss)
        optimizer: Callable,  # partial: optimizer(params) -> torch.optim.Optimizer
        scheduler: Callable | None = None,  # partial: scheduler(optimizer, total_steps=...) -> LR scheduler
        weight_decay: float = 0.1,
        embed_dim: int | None = None,  # model.embed_dim, the width the heads must share; None = not checked
    ):
        super().__init__()
        if embed_dim is not None and net.embed_dim != embed_dim:
            raise ValueError(f"model.embed_dim is {embed_dim} but the heads output {net.embed_dim}")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss"])
        self.net, self.loss = net, loss
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
