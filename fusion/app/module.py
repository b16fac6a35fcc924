"""Lightning wrapper around fusion.model.AlignmentModel: the training loop's steps, logging and optimisation.

Thin on purpose: the model, loss and metrics are library objects; this file wires them to Lightning. The loss comes
from the `loss` config group; optimiser and scheduler arrive as partials from Hydra (lightning-hydra-template style):
AdamW, cosine decay with linear warm-up. The loss's own parameters (SigLIP's bias) are optimised with the model's.

model.accum_freq = K > 1: feature-cached gradient accumulation (fusion.accumulation): each training batch
(data.batch_size pairs, the contrastive batch) is embedded in K micro-batches, so only one micro-batch's activations are
held while the gradient is the whole batch's. It runs in manual optimisation (Lightning refuses
Trainer(gradient_clip_val) there; the module takes the trainer's clipping value over in configure_callbacks, the first
hook that sees the trainer, and clips the accumulated gradient once per step as the automatic path does) and steps the
scheduler per batch; K = 1 is Lightning's automatic optimisation, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from fusion.accumulation import accumulate_gradients, split_batch
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
        accum_freq: int = 1,  # K micro-batches per training batch (feature-cached accumulation); 1 = one pass
    ):
        super().__init__()
        if embed_dim is not None and net.embed_dim != embed_dim:
            raise ValueError(f"model.embed_dim is {embed_dim} but the heads output {net.embed_dim}")
        if int(accum_freq) != accum_freq or accum_freq < 1:
            raise ValueError(f"model.accum_freq is {accum_freq}: the number of micro-batches per batch, an int >= 1")
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss"])
        self.net, self.loss = net, loss
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_metrics, self.test_metrics = RetrievalMetrics(), RetrievalMetrics()
        self.accum_freq = int(accum_freq)
        self.automatic_optimization = self.accum_freq == 1
        self._clip: tuple[float | None, str | None] = (None, None)  # manual mode: the trainer's clipping, taken over

    def forward(self, genomics, brain):
        return self.net(genomics, brain)

    def on_fit_start(self) -> None:
        """Fit data-fitted encoders (e.g. tangent connectivity) on the training split; they keep a `fitted` flag."""
        for key, tower in (("genomics", self.net.genomics), ("brain", self.net.brain)):
            fitted = getattr(tower.encoder, "fitted", None)
            if hasattr(tower.encoder, "fit") and fitted is not None and not bool(fitted):
                tower.encoder.fit(item[key] for item in self.trainer.datamodule.fit_inputs())

    def configure_callbacks(self):
        if not self.automatic_optimization and self.trainer.gradient_clip_val:
            self._clip = (float(self.trainer.gradient_clip_val), self.trainer.gradient_clip_algorithm)
            self.trainer.gradient_clip_val = None  # applied in training_step instead
        return []

    def objective(self, z_g, z_b):
        """The batch's loss from its embeddings (B, D) each, with the model's temperature."""
        return self.loss(z_g, z_b, self.net.logit_scale())

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            z = self.net(batch["genomics"], batch["brain"])
            loss = self.objective(z["genomics"], z["brain"])
        else:
            loss = self._accumulated_step(batch)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=len(batch["index"]))
        self.log("train/logit_scale", self.net.logit_scale(), batch_size=len(batch["index"]))
        if isinstance(getattr(self.loss, "logit_bias", None), torch.Tensor):
            self.log("train/logit_bias", self.loss.logit_bias, batch_size=len(batch["index"]))
        return loss

    def _accumulated_step(self, batch):
        """One optimiser step on the whole batch, embedded in accum_freq micro-batches (fusion.accumulation)."""
        optimizer = self.optimizers()
        optimizer.zero_grad()
        micro = list(zip(split_batch(batch["genomics"], self.accum_freq), split_batch(batch["brain"], self.accum_freq)))

        def embed(pair):
            z = self.net(*pair)
            return z["genomics"], z["brain"]  # (b, D) each

        shared = [*self.net.logit_scale.parameters(), *self.loss.parameters()]
        loss = accumulate_gradients(micro, embed, self.objective, shared, self.manual_backward, self.device)
        clip_val, algorithm = self._clip
        if clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.net.logit_scale.clamp_()  # clamp to [0, ln 100] after each optimiser step

    def _eval_step(self, batch, metrics: RetrievalMetrics, stage: str):
        z = self.net(batch["genomics"], batch["brain"])
        loss = self.objective(z["genomics"], z["brain"])
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
        # the model's and the loss's parameters (SigLIP's bias); no weight decay on 0-d and 1-d ones (fusion.optim)
        optimizer = self.optimizer_factory(params=param_groups(self, self.hparams.weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
