"""DemoCohortConfig: every parameter of the generated demo cohort, with its default and meaning (the one source).

Library code (a plain dataclass). The application registers it in Hydra's ConfigStore as the `demo` group's `default`
option (fusion/app/cohort_source.py), so `python -m fusion.train demo.n_subjects=50` (used when data.manifest is null)
and `python -m fusion.demo_cohort out=DIR n_subjects=50` read these fields and defaults; `demo_params` validates and
completes a partial set of them for `generate_demo_cohort`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class DemoCohortConfig:
    # --- cohort ---
    seed: int = 0  # seeds everything; subject k's genotypes and scan depend only on (seed, k)
    n_subjects: int = 300  # subjects (rows of the manifest, samples of the VCF, fMRI files)
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train / val / test (random)
    n_sites: int = 3  # scanner sites in the `site` covariate (no effect on the data)

    # --- genome ---
    n_contigs: int = 4  # contigs chr1..chrN of the reference FASTA
    contig_length: int = 50_000  # bases per contig
    soft_mask_fraction: float = 0.15  # fraction of each contig in lowercase (soft-masked) stretches
    n_regions: int = 16  # BED regions, spread evenly over the contigs
    region_length: int = 1000  # mean region length (bp)
    region_length_jitter: int = 100  # region lengths are uniform in region_length +- this
    variants_per_region: int = 30  # VCF sites per region (causal SNVs included); non-overlapping
    indel_fraction: float = 0.15  # fraction of non-causal sites that are insertions or deletions
    max_indel_len: int = 5  # indel length 1..this
    multiallelic_fraction: float = 0.05  # fraction of non-causal SNVs with two ALT alleles
    missing_rate: float = 0.0  # fraction of genotype calls written as '.'

    # --- planted link (truth.json) ---
    n_factors: int = 8  # K latent genetic factors, each coupling one pair of networks (K <= n_networks)
    causal_per_factor: int = 3  # causal SNVs per factor (factor = standardized weighted sum of their ALT dosages)
    causal_maf_min: float = 0.25  # causal ALT frequencies are uniform in [causal_maf_min, causal_maf_max]
    causal_maf_max: float = 0.5  # upper bound of the causal ALT frequencies
    effect_size: float = 0.2  # change in the network-pair correlation per SD of the factor
    base_coupling: float = 0.0  # network-pair correlation at factor 0 (random sign per pair)
    max_coupling: float = 0.45  # couplings are clipped to +-this (< 0.5: a network sits in up to two pairs)

    # --- brain ---
    n_networks: int = 9  # networks = k-means clusters of the Power-2011 coordinates
    sphere_radius_mm: float = 5.0  # atlas spheres around the 264 Power coordinates (4 mm MNI grid)
    n_volumes: int = 150  # fMRI volumes per subject
    tr: float = 2.0  # repetition time (s), written in the NIfTI header
    ar_coef: float = 0.5  # AR(1) coefficient of every simulated signal (temporal smoothness)
    parcel_noise: float = 0.7  # SD of each parcel's own noise, relative to the unit-variance network signal
    voxel_noise: float = 1.0  # SD of each sphere voxel's own noise, same units
    background_signal: float = 0.3  # SD of the global signal in brain voxels outside the spheres, same units
    baseline: float = 1000.0  # mean BOLD intensity (x a per-subject gain in [0.9, 1.1])
    amplitude: float = 10.0  # intensity units per unit of signal (10 = 1% of the baseline)


PARAMETERS = tuple(f.name for f in dataclasses.fields(DemoCohortConfig))


def demo_params(**params) -> dict:
    """The defaults of DemoCohortConfig updated with `params` (unknown keys are an error), in plain JSON types."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown demo cohort parameter(s) {unknown}; known: {sorted(PARAMETERS)}")
    merged = dataclasses.asdict(DemoCohortConfig(**params))
    for f in dataclasses.fields(DemoCohortConfig):  # 2 and 2.0 are one parameter value (and one cache folder)
        if f.type == "float":
            merged[f.name] = float(merged[f.name])
    merged["split_fractions"] = [float(x) for x in merged["split_fractions"]]
    return json.loads(json.dumps(merged))
