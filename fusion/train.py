"""Training entry point: `python -m fusion.train [experiment=X] [key=value ...]` (Hydra).

seed -> cohort (generated demo cohort when data.manifest is null; validated before any compute) -> transforms,
datamodule, model, callbacks, loggers, trainer -> fit (resumes from ckpt_path) -> test on the best checkpoint.
Returns the value of `optimized_metric` for sweepers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fusion.app import CONFIG_DIR
from fusion.app.build import build, format_retrieval, instantiate_dict
from fusion.app.cohort_source import resolve_cohort

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Fit and test; returns (metrics, objects). Used by the CLI and by the tests."""
    L.seed_everything(cfg.seed, workers=True)
    resolve_cohort(cfg)
    run = build(cfg)
    datamodule, model = run.datamodule, run.model
    log.info("cohort: %s", run.report.summary())
    log.info("subjects per split: %s", datamodule.split_sizes())
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)  # what export and resumes read back

    callbacks, loggers = instantiate_dict(cfg.get("callbacks")), instantiate_dict(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("no best checkpoint found; testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        metrics |= test
        log.info("test retrieval: %s", format_retrieval(test, datamodule.split_sizes()["test"]))
        print(format_retrieval(test, datamodule.split_sizes()["test"]))
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    metrics, _ = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
