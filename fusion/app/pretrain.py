"""Caduceus masked-language-model (MLM) pretraining in the application: one LightningModule, one LightningDataModule
and one builder, shared by the experiment and by the tiny model's first-use pretraining.

    python -m fusion.train experiment=pretrain_caduceus data.reference=REF.fa
        train() -> build_pretraining(cfg.model, cfg.data, cfg.trainer) -> Trainer.fit -> PretrainRun.finish(run folder)
    genomics=caduceus_tiny with genomics.encoder.checkpoint null (e.g. experiment=demo_caduceus)
        train() -> resolve_pretrained_encoder(cfg) -> pretrained_checkpoint(genomics.pretrain.model,
        genomics.pretrain.data + the cohort's reference) -> the same builder, a bare Trainer, finish(temporary folder)
        -> renamed to <paths.cache_dir>/caduceus_mlm/<key> -> genomics.encoder.checkpoint=<that folder>

The settings are written once: configs/model/caduceus_mlm.yaml (architecture, AdamW, warm-up + cosine, weight decay,
grad clip) and configs/data/fasta.yaml (windows, steps, seed); configs/genomics/caduceus_tiny.yaml places these same
two files under genomics.pretrain through its defaults list. References: Schiff et al. 2024, Sec. 4.1 (MLM recipe;
RC augmentation for Caduceus-Ph); fusion/optim.py (the weight-decay rule and the schedule of every training loop).
Output folder: config.json + model.safetensors (published CaduceusForMaskedLM layout), tokenizer_config.json and
pretrain.json (inputs, per-step training losses, held-out masked loss and accuracy), written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from fusion.app.build import instantiate_with
from fusion.optim import param_groups
from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.mlm import FastaWindows, MaskedWindows, masked_lm_sums, rc_augment
from genomics.caduceus.modeling import CaduceusForMaskedLM
from genomics.caduceus.tokenizer import CaduceusTokenizer
from genomics.checkpoints import sha256_file

log = logging.getLogger(__name__)
# the Trainer of first-use pretraining, besides the run's accelerator and precision: one epoch of data.steps batches
# (the experiment sets the same in configs/experiment/pretrain_caduceus.yaml), nothing written but the result
FIRST_USE_TRAINER = dict(
    max_epochs=1,
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
)


class MaskedLMModule(L.LightningModule):
    """A CaduceusForMaskedLM trained from scratch: masked cross-entropy, AdamW (fusion.optim.param_groups), the
    optimiser's schedule per step, gradients clipped to `grad_clip` (norm), RC augmentation when the model is not
    RC-equivariant (Caduceus-Ph). Validation logs val/loss and val/accuracy over all masked positions."""

    def __init__(
        self,
        config: dict,  # CaduceusConfig fields
        optimizer: Callable,  # partial: optimizer(params) -> torch.optim.Optimizer
        scheduler: Callable | None,  # partial: scheduler(optimizer, total_steps=...) -> LR scheduler
        weight_decay: float,  # AdamW decay on weight matrices only
        grad_clip: float,  # max gradient norm
    ):
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        self.model = CaduceusForMaskedLM(CaduceusConfig(**config))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.losses: list[torch.Tensor] = []  # training loss of every step (this process)
        self.seconds = 0.0
        self._val_sums: torch.Tensor | None = None

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self) -> None:
        self.seconds += time.perf_counter() - self._t0

    def training_step(self, batch, batch_idx):
        inputs, labels = batch["inputs"], batch["labels"]  # (B, L) each
        if not self.model.config.rcps:  # Caduceus-Ph sees both strands through the data (upstream's rc_aug)
            inputs, labels = rc_augment(inputs, labels, batch["flip"], self.model.config.complement_map)
        loss = self.model(inputs, labels=labels).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(inputs))
        self.losses.append(loss.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        self._val_sums += masked_lm_sums(self.model(batch["inputs"]).logits, batch["labels"])

    def on_validation_epoch_end(self) -> None:
        loss, correct, count = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum").tolist()
        self.log_dict({"val/loss": loss / max(count, 1), "val/accuracy": correct / max(count, 1)})

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=param_groups(self.model, self.hparams.weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class FastaDataModule(L.LightningDataModule):
    """Masked windows of a FASTA (genomics.caduceus.mlm.MaskedWindows): steps x batch_size training windows, one
    epoch, in order; eval_batches x batch_size held-out windows drawn from another random stream of the same seed."""

    def __init__(
        self,
        reference: str | None,
        seq_len: int,
        batch_size: int,
        steps: int,
        eval_batches: int,
        seed: int,
        num_workers: int,
    ):
        super().__init__()
        if reference is None:
            raise ValueError("data.reference is null: give the FASTA to pretrain on (data.reference=REF.fa)")
        self.windows = FastaWindows(reference, seq_len)  # reads the index now: a bad FASTA fails before training
        self.reference, self.seq_len, self.batch_size = str(reference), seq_len, batch_size
        self.steps, self.eval_batches, self.seed, self.num_workers = steps, eval_batches, seed, num_workers

    def _loader(self, n_batches: int, stream: int) -> DataLoader:
        windows = MaskedWindows(self.windows, n_batches * self.batch_size, self.seed, stream=stream)
        workers = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        return DataLoader(windows, batch_size=self.batch_size, drop_last=stream == 0, **workers)

    def train_dataloader(self):
        return self._loader(self.steps, stream=0)

    def val_dataloader(self):
        return self._loader(self.eval_batches, stream=1)


@dataclass
class PretrainRun:
    """What build_pretraining makes: the datamodule, the module, and the inputs the weights are a function of."""

    datamodule: FastaDataModule
    model: MaskedLMModule
    inputs: dict  # FASTA sha256 + settings + accelerator/precision (pretrain.json "inputs"; first use: the cache key)

    def summary(self) -> str:
        c, d = self.model.model.config, self.datamodule
        kind = "PS" if c.rcps else "Ph"
        return (
            f"MLM pretraining of a Caduceus-{kind} (d_model {c.d_model}, {c.n_layer} layers) on {d.reference}: "
            f"{d.steps} steps of {d.batch_size} x {d.seq_len} bases, seed {d.seed}"
        )

    def finish(self, trainer: L.Trainer, out_dir: str | Path) -> dict:
        """Held-out masked loss and accuracy of the final weights; on rank 0, out_dir gets the published layout,
        tokenizer_config.json and pretrain.json (last). Returns the evaluation metrics."""
        val = (trainer.validate(self.model, datamodule=self.datamodule, verbose=False) or [{}])[0]
        losses = torch.stack(self.model.losses).float().cpu().tolist() if self.model.losses else []
        metrics = {f"eval/{k}": float(val.get(f"val/{k}", float("nan"))) for k in ("loss", "accuracy")}
        if trainer.is_global_zero:
            out = Path(out_dir)
            self.model.model.save_pretrained(out)
            CaduceusTokenizer(model_max_length=self.datamodule.seq_len).save_pretrained(out)
            record = {
                "inputs": self.inputs,
                "fasta": self.datamodule.reference,
                "steps": len(losses),
                "seconds": self.model.seconds,
                "train_loss_first10": sum(losses[:10]) / max(len(losses[:10]), 1),
                "train_loss_last10": sum(losses[-10:]) / max(len(losses[-10:]), 1),
                "eval_loss": metrics["eval/loss"],
                "eval_accuracy": metrics["eval/accuracy"],
                "losses": losses,
            }
            (out / "pretrain.json").write_text(json.dumps(record, indent=1))
        return metrics


def pretraining_inputs(model: DictConfig, data: DictConfig, trainer: DictConfig | dict) -> dict:
    """What the pretrained weights are a function of, in JSON types: the FASTA's content (sha256), the model and data
    settings (not the FASTA's path, not num_workers), the accelerator and precision."""
    settings = OmegaConf.to_container(data, resolve=True)
    inputs = {
        "fasta_sha256": sha256_file(settings.pop("reference")),
        "model": OmegaConf.to_container(model, resolve=True),
        "data": {k: v for k, v in settings.items() if k != "num_workers"},
        "trainer": {k: trainer.get(k) for k in ("accelerator", "precision")},
    }
    return json.loads(json.dumps(inputs))


def build_pretraining(model: DictConfig, data: DictConfig, trainer: DictConfig | dict) -> PretrainRun:
    """The pretraining's objects from its model and data nodes (wherever they sit in the config). The initial
    weights are drawn from data.seed in a forked RNG, so they depend on the settings only and the caller's random
    streams are left as they were."""
    datamodule = instantiate_with(data, {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(datamodule.seed)
        module = instantiate_with(model, {})
    return PretrainRun(datamodule, module, pretraining_inputs(model, data, trainer))


def is_pretraining(cfg: DictConfig) -> bool:
    """The dispatch of fusion.train: the model group says which run this is (MaskedLMModule -> MLM pretraining)."""
    mlm = issubclass(get_object(cfg.model._target_), MaskedLMModule)
    fasta = issubclass(get_object(cfg.data._target_), FastaDataModule)
    if mlm != fasta:
        raise ValueError(
            f"model={cfg.model._target_} and data={cfg.data._target_} do not go together: MLM pretraining is "
            "model=caduceus_mlm with data=fasta (experiment=pretrain_caduceus); alignment is model=clip, data=cohort"
        )
    return mlm


def resolve_pretrained_encoder(cfg: DictConfig) -> None:
    """genomics.pretrain set and genomics.encoder.checkpoint null (caduceus_tiny): pretrain on the cohort's reference
    (cfg.data.reference, resolved) once, cached, and point genomics.encoder.checkpoint at the folder (in place)."""
    genomics = cfg.get("genomics")
    if genomics is None or genomics.get("pretrain") is None or genomics.encoder.get("checkpoint") is not None:
        return
    with open_dict(cfg):
        genomics.pretrain.data.reference = cfg.data.reference
    folder = pretrained_checkpoint(genomics.pretrain.model, genomics.pretrain.data, cfg.paths.cache_dir, cfg.trainer)
    with open_dict(cfg):
        genomics.encoder.checkpoint = str(folder)


def pretrained_checkpoint(model: DictConfig, data: DictConfig, cache_dir: str | Path, trainer: DictConfig | dict):
    """<cache_dir>/caduceus_mlm/<key>, pretrained with these settings on data.reference; key = sha256 of
    pretraining_inputs (FASTA content, settings, accelerator, precision). A finished folder is reused; otherwise the
    model is trained into a unique temporary sibling folder that is renamed into place (atomic: a half-written
    folder is never seen; of two processes racing, the first rename wins and the other uses its folder)."""
    inputs = pretraining_inputs(model, data, trainer)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_dir).expanduser().absolute() / "caduceus_mlm" / key
    if _finished(out, inputs):
        log.info("pretrained Caduceus: reusing %s", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        run = build_pretraining(model, data, trainer)
        log.info("first use: %s -> %s", run.summary(), out)
        with torch.random.fork_rng(devices=[]):  # the run that asked keeps its random streams
            fit = L.Trainer(
                default_root_dir=tmp, accelerator=trainer.get("accelerator"), precision=trainer.get("precision"),
                **FIRST_USE_TRAINER,
            )  # fmt: skip
            fit.fit(run.model, datamodule=run.datamodule)
            metrics = run.finish(fit, tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not _finished(out, inputs):
                raise
            log.info("pretrained Caduceus: another process finished %s first; using it", out)
        else:
            log.info("pretrained Caduceus: %s (held-out masked accuracy %.3f)", out, metrics["eval/accuracy"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _finished(out: Path, inputs: dict) -> bool:
    """True for a finished folder of these inputs; False when there is none; raises for anything else in the way."""
    record = out / "pretrain.json"
    if not record.is_file():
        if out.exists():
            raise FileExistsError(f"{out} exists but holds no finished pretraining (no pretrain.json); delete it")
        return False
    if json.loads(record.read_text()).get("inputs") != inputs:
        raise FileExistsError(f"{out} holds a pretraining with other inputs (see {record}); delete it")
    return True
