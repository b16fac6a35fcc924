"""Demo cohort generator: a small synthetic cohort with a planted genotype -> functional-connectivity link.

Library (no Hydra): `genome` (FASTA, BED, VCF), `brain` (atlas, BOLD), `link` (the planted factors), `cohort`
(`generate_demo_cohort(out_dir, **params) -> paths`). The Hydra entry is `python -m fusion.demo_cohort`.
"""

from fusion.demo.generator import DEFAULTS, generate_demo_cohort

__all__ = ["DEFAULTS", "generate_demo_cohort"]
