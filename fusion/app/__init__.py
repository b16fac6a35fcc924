"""The application: everything that imports Lightning or Hydra (open_clip's `open_clip_train`, kept apart).

    build.py        config -> cohort (validated once) -> transforms, datamodule, model built from it
    cohort_source   data group -> cohort files on disk (a user's, or the generated demo cohort)
    datamodule.py   LightningDataModule over a loaded Cohort
    module.py       LightningModule around fusion.model.AlignmentModel
    pretrain.py     Caduceus MLM pretraining (experiment=pretrain_caduceus, and the tiny model's first use)
    checks.py       checks that need the config (encoder window / context, saved-config targets, checkpoints)
    resilience.py   atomic checkpoints, NaN/Inf loss guard, exact resume (random states)
Entry points (`python -m fusion.train`, `fusion.export`, `fusion.validate`, `fusion.demo_cohort`) are thin mains
over these.
"""

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")  # the project's own config tree


def launch_dir() -> str:
    """`${launch_dir:}` in configs/paths: the directory the run was started from. Hydra's runtime.cwd inside a job;
    the process's working directory before any job exists (a multirun's hydra.sweep.dir, which the launcher resolves
    before Hydra's runtime config is set, so `${hydra:runtime.cwd}` cannot be used there)."""
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


OmegaConf.register_new_resolver("launch_dir", launch_dir, replace=True)  # every entry point imports fusion.app
