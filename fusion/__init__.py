"""fusion: contrastive alignment of genomics and brain encoders into a shared 512-D space.

Library modules (encoders, heads, losses, metrics, data) import no Lightning or Hydra; the application modules
(`lightning_module`, `datamodule`, `train`, `export`, `demo_cohort`) sit thin on top.
"""
