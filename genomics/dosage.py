"""ALT allele dosages at the VCF sites inside a set of regions: the linear baseline of statistical genetics.

References: Purcell et al. 2007 (PLINK: additive allele coding 0/1/2, mean imputation); Chang et al. 2015 (PLINK 2,
`--export A`: one column per ALT allele of a multi-allelic site, split as `bcftools norm -m-` would).

    table = read_dosages("cohort.vcf.gz", regions)           # every sample, every ALT of every site in the regions
    table.sites                                              # list[Site] (contig, pos 1-based, id, ref, alt)
    table.dosages                                            # (S, N) float32: ALT copies per sample, NaN = missing

A site is inside a region when its first base is (0-based `start <= pos0 < end`); sites shared by overlapping regions
count once. Dosage = the number of the sample's alleles equal to that ALT (0/1/2 for diploid calls, 0/1 for haploid);
a call with any missing allele is missing (NaN). The spanning-deletion allele `*` carries no feature. Reading is
pysam over the VCF's index; contig names are tried as given and with/without a `chr` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genomics.errors import GenomicsInputError
from genomics.regions import Region


@dataclass(frozen=True)
class Site:
    contig: str  # as the VCF names it
    pos: int  # 1-based, as in the VCF
    id: str  # the VCF ID column ("." when absent)
    ref: str
    alt: str  # one ALT allele (multi-allelic sites give one Site per ALT)

    @property
    def name(self) -> str:
        return f"{self.contig}:{self.pos}:{self.ref}:{self.alt}"


@dataclass
class DosageTable:
    samples: list[str]  # the VCF's sample names (the N axis)
    sites: list[Site]  # the S axis
    dosages: np.ndarray  # (S, N) float32 ALT copies, NaN where the call is missing

    def columns(self, samples: Sequence[str]) -> np.ndarray:
        index = {s: i for i, s in enumerate(self.samples)}
        missing = [s for s in samples if s not in index]
        if missing:
            raise KeyError(f"samples {missing[:5]} are not in the VCF (of {len(self.samples)} samples)")
        return np.array([index[s] for s in samples], dtype=np.int64)


def _contig_in(vf, contig: str) -> str | None:
    names = set(vf.header.contigs) | (set(vf.index) if vf.index is not None else set())
    for candidate in (contig, contig.removeprefix("chr"), "chr" + contig):
        if candidate in names:
            return candidate
    return None


def read_dosages(vcf: str | Path, regions: Sequence[Region]) -> DosageTable:
    """Dosages of every sample at every ALT of every site inside the regions (see the module docstring)."""
    import pysam

    try:
        vf = pysam.VariantFile(str(vcf))
    except (OSError, ValueError) as err:
        raise GenomicsInputError(f"{vcf}: not a readable VCF/BCF ({err})") from err
    with vf:
        samples = list(vf.header.samples)
        seen: set[tuple] = set()
        sites: list[Site] = []
        rows: list[np.ndarray] = []
        for region in regions:
            contig = _contig_in(vf, region.contig)
            if contig is None:
                continue  # no records on that contig (the cohort check reports naming problems)
            for rec in vf.fetch(contig, region.start, region.end):
                if not region.start <= rec.start < region.end:
                    continue  # fetch also returns records that only overlap the region
                calls = [s.allele_indices for s in rec.samples.values()]  # per sample: tuple of allele indices
                for a, alt in enumerate(rec.alts or (), start=1):
                    key = (rec.chrom, rec.pos, rec.ref, alt)
                    if alt == "*" or key in seen:
                        continue
                    seen.add(key)
                    sites.append(Site(rec.chrom, rec.pos, rec.id or ".", rec.ref, alt))
                    rows.append(_dosage_row(calls, a))
    dosages = np.stack(rows) if rows else np.zeros((0, len(samples)), np.float32)
    return DosageTable(samples, sites, dosages)


def _dosage_row(calls: list[tuple], alt_index: int) -> np.ndarray:
    """(N,) copies of allele `alt_index` per sample; NaN when any allele of the call is missing."""
    out = np.empty(len(calls), dtype=np.float32)
    for j, alleles in enumerate(calls):
        if not alleles or any(x is None for x in alleles):
            out[j] = np.nan
        else:
            out[j] = sum(x == alt_index for x in alleles)
    return out
