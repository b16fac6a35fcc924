"""Demo cohort generator: a small synthetic cohort with a planted genotype -> functional-connectivity link.

Library (no Hydra): `config` (DemoCohortConfig: every parameter, its default and meaning), `genome` (FASTA, BED, VCF),
`brain` (atlas, BOLD), `link` (the planted factors), `generator` (`generate_demo_cohort(out_dir, **params) -> paths`).
The Hydra entry is `python -m fusion.demo_cohort`.
"""

from fusion.demo.config import DemoCohortConfig, demo_params
from fusion.demo.generator import generate_demo_cohort

__all__ = ["DemoCohortConfig", "demo_params", "generate_demo_cohort"]
