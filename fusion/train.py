"""Training entry point: `python -m fusion.train [experiment=X] [key=value ...]` (Hydra).

Two kinds of run, told apart in one place (`prepare`, by the model group):
  alignment (model=clip, data=cohort; every experiment but one): cohort files (the generated demo cohort when
      data.manifest is null) -> the tiny Caduceus's first-use MLM pretraining when genomics asks for it ->
      cohort validated before any compute, transforms, datamodule, model (fusion.app.build) -> fit (resumes from
      ckpt_path) -> test on the best checkpoint.
  MLM pretraining (experiment=pretrain_caduceus: model=caduceus_mlm, data=fasta): FASTA windows, CaduceusForMaskedLM
      (fusion.app.pretrain) -> fit -> held-out masked loss/accuracy -> the published checkpoint layout and
      pretrain.json in the run folder.
Seed, run folder, config_resolved.yaml, callbacks, loggers, Trainer and fit are shared. Returns the value of
`optimized_metric` for sweepers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fusion.app import CONFIG_DIR, resilience
from fusion.app.build import Run, build, build_inputs, format_retrieval, instantiate_dict
from fusion.app.checks import check_checkpoint
from fusion.app.cohort_source import resolve_cohort, resolve_reference
from fusion.app.pretrain import PretrainRun, build_pretraining, is_pretraining, resolve_pretrained_encoder
from fusion.errors import USER_ERRORS, TrainingDivergedError

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig) -> Run | PretrainRun:
    """Resolve the run's inputs in cfg (in place, so config_resolved.yaml records them) and build its objects."""
    if is_pretraining(cfg):
        resolve_reference(cfg)  # data.reference, or the demo cohort's
        run = build_pretraining(cfg.model, cfg.data, cfg.trainer)
        log.info("%s", run.summary())
        return run
    resolve_cohort(cfg)  # data.* files, or the demo cohort's
    inputs = build_inputs(cfg)  # the cohort checked (cheap level) and its transforms, before any compute
    resolve_pretrained_encoder(cfg)  # genomics.encoder.checkpoint, or the first-use pretrained folder
    run = build(cfg, inputs)
    log.info("cohort: %s", run.report.summary())
    log.info("subjects per split: %s", run.datamodule.split_sizes())
    return run


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit, then test (alignment) or evaluate and save (pretraining); returns (metrics, objects). Used by the CLI and
    by the tests."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("ckpt_path"):
        check_checkpoint(cfg.ckpt_path)  # exists and reads weights-only, before any compute
    run = prepare(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)  # what export and resumes read back

    callbacks, loggers = instantiate_dict(cfg.get("callbacks")), instantiate_dict(cfg.get("logger"))
    callbacks += resilience.callbacks(callbacks)  # NaN/Inf loss guard, exact resume (random states)
    extra = resilience.plugins(cfg.trainer)  # atomic checkpoint writes
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)
    if cfg.get("train", True):
        trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if isinstance(run, PretrainRun):
        metrics |= run.finish(trainer, output_dir)
        message = f"held-out masked accuracy {metrics['eval/accuracy']:.3f} (loss {metrics['eval/loss']:.4f})"
        log.info("%s; checkpoint folder: %s", message, output_dir)
        print(f"{message}\ncheckpoint folder (genomics.encoder.checkpoint=...): {output_dir}")
    elif cfg.get("test", True):
        metrics |= alignment_test(trainer, run)
    return metrics, {"trainer": trainer, "model": run.model, "datamodule": run.datamodule}


def alignment_test(trainer: L.Trainer, run: Run) -> dict:
    """Test retrieval on the best checkpoint (the current weights when there is none); printed and returned."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        log.warning("no best checkpoint found; testing the current weights")
    trainer.test(run.model, datamodule=run.datamodule, ckpt_path=best or None, weights_only=True)
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    text = format_retrieval(test, run.datamodule.split_sizes()["test"])
    log.info("test retrieval: %s", text)
    print(text)
    return test


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    try:
        metrics, _ = train(cfg)
    except USER_ERRORS as err:  # a user's mistake: its message, no traceback (fusion.errors)
        print(f"fusion.train: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDivergedError as err:
        print(f"fusion.train: {err}", file=sys.stderr)
        sys.exit(1)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
