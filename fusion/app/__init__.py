"""The application: everything that imports Lightning or Hydra (open_clip's `open_clip_train`, kept apart).

    build.py        config -> cohort (validated once) -> transforms, datamodule, model built from it
    cohort_source   data group -> cohort files on disk (a user's, or the generated demo cohort)
    datamodule.py   LightningDataModule over a loaded Cohort
    module.py       LightningModule around fusion.model.AlignmentModel
    pretrain.py     Caduceus MLM pretraining (experiment=pretrain_caduceus, and the tiny model's first use)
Entry points (`python -m fusion.train`, `fusion.export`, `fusion.demo_cohort`) are thin Hydra mains over these.
"""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")  # the project's own config tree
