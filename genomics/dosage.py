"""ALT allele dosages at the genotype sites inside a set of regions: the linear baseline of statistical genetics.

References: Purcell et al. 2007 (PLINK: additive allele coding 0/1/2, mean imputation); Chang et al. 2015 (PLINK 2,
`--export A`: one column per ALT allele of a multi-allelic site, split as `bcftools norm -m-` would).

    table = read_dosages("cohort.vcf.gz", regions)           # or a PLINK 2 .pgen / PLINK 1 .bed (genomics.genotypes)
    table.sites                                              # list[Site] (contig, pos 1-based, id, ref, alt)
    table.dosages                                            # (S, N) float32: ALT copies per sample, NaN = missing

One path for every format: the file is read through genomics.genotypes.open_genotypes (VCF/BCF with pysam, PLINK with
pgenlib), which gives each variant's allele codes per sample; the dosage is counted here. A site is inside a region
when its first base is (0-based `start <= pos0 < end`); sites shared by overlapping regions count once. Dosage = the
number of the sample's alleles equal to that ALT (0/1/2 for diploid calls, 0/1 for haploid VCF calls; PLINK stores
those as homozygous, 2); a call with any missing allele is missing (NaN). The spanning-deletion allele `*` carries no
feature. Contig names are matched with or without a `chr` prefix (genomics.contigs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genomics.contigs import contig_key
from genomics.genotypes import MISSING, open_genotypes
from genomics.regions import Region


@dataclass(frozen=True)
class Site:
    contig: str  # as the genotype file names it
    pos: int  # 1-based, as in the VCF
    id: str  # the ID column ("." when absent)
    ref: str
    alt: str  # one ALT allele (multi-allelic sites give one Site per ALT)

    @property
    def name(self) -> str:
        return f"{self.contig}:{self.pos}:{self.ref}:{self.alt}"


@dataclass
class DosageTable:
    samples: list[str]  # the file's sample names (VCF samples, PLINK IIDs; the N axis)
    sites: list[Site]  # the S axis
    dosages: np.ndarray  # (S, N) float32 ALT copies, NaN where the call is missing

    def columns(self, samples: Sequence[str]) -> np.ndarray:
        index = {s: i for i, s in enumerate(self.samples)}
        missing = [s for s in samples if s not in index]
        if missing:
            raise KeyError(f"samples {missing[:5]} are not genotype samples (of {len(self.samples)} samples)")
        return np.array([index[s] for s in samples], dtype=np.int64)


def read_dosages(genotypes: str | Path, regions: Sequence[Region]) -> DosageTable:
    """Dosages of every sample at every ALT of every site inside the regions (see the module docstring)."""
    seen: set[tuple] = set()
    sites: list[Site] = []
    rows: list[np.ndarray] = []
    with open_genotypes(genotypes) as source:
        samples = source.samples
        for variant, alleles in source.genotypes(regions):  # alleles (N, P)
            for a, alt in enumerate(variant.alts, start=1):
                key = (contig_key(variant.contig), variant.pos, variant.ref, alt)
                if alt == "*" or key in seen:
                    continue
                seen.add(key)
                sites.append(Site(variant.contig, variant.pos, variant.id, variant.ref, alt))
                rows.append(dosage_row(alleles, a))
    dosages = np.stack(rows) if rows else np.zeros((0, len(samples)), np.float32)
    return DosageTable(samples, sites, dosages)


def dosage_row(alleles: np.ndarray, alt_index: int) -> np.ndarray:
    """(N,) copies of allele `alt_index` per sample from (N, P) allele codes; NaN when any slot is missing."""
    out = (alleles == alt_index).sum(axis=1).astype(np.float32)
    out[(alleles == MISSING).any(axis=1)] = np.nan
    return out
