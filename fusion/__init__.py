"""fusion: contrastive alignment of genomics and brain encoders into a shared 512-D space.

Library (no Lightning, no Hydra): `cohort` (+ `cohort_checks`, `genome_checks`, `scan_checks`), `errors`, `data`,
`encoders`, `heads`, `losses`, `metrics`, `model`, `distributed`, `demo/` (the demo cohort generator). Application:
`app/` (Lightning + Hydra) and the entry points `train`, `export`, `validate`, `demo_cohort` that sit thin on top of it.
"""
