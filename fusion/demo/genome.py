"""Synthetic genome side of the demo cohort: reference FASTA (+ .fai), regions BED, phased multi-sample VCF.gz (+ .tbi).

Reference: contigs chr1..chrC of random sequence (GC ~ 41%), a short N run at each contig start, soft-masked
(lowercase) stretches. Regions: ~1 kb windows spread over the contigs, never overlapping the N runs. Variants sit fully
inside the regions, spaced so that no two overlap (the simple bcftools-consensus case): SNVs, insertions and deletions
of 1..max_indel_len bases, a few multi-allelic SNVs; ALT frequencies are drawn per variant. Haplotypes are drawn
independently per site (Hardy-Weinberg, no LD). Written with pysam (VariantFile "wz", tabix_index, faidx).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pysam

from genomics.regions import Region

BASES = np.array(list("ACGT"))
GC_PROBS = np.array([0.295, 0.205, 0.205, 0.295])
N_RUN = 100  # N bases at each contig start


@dataclass
class Site:
    """One VCF record of the demo: 0-based start, alleles, ALT frequencies, and whether it is a causal SNV."""

    id: str
    contig: str
    start: int
    ref: str
    alts: tuple[str, ...]
    freqs: tuple[float, ...]  # one per ALT
    region: int


def make_reference(rng: np.random.Generator, n_contigs: int, contig_length: int, soft_mask_fraction: float) -> dict:
    """{contig: sequence}; random bases, N run at the start, lowercase stretches covering ~soft_mask_fraction."""
    contigs = {}
    for c in range(n_contigs):
        seq = BASES[rng.choice(4, size=contig_length, p=GC_PROBS)]
        seq[:N_RUN] = "N"
        masked = 0
        while masked < soft_mask_fraction * contig_length:
            length = int(rng.integers(50, 400))
            start = int(rng.integers(N_RUN, contig_length - length))
            seq[start : start + length] = np.char.lower(seq[start : start + length])
            masked += length
        contigs[f"chr{c + 1}"] = "".join(seq.tolist())
    return contigs


def make_regions(rng: np.random.Generator, contigs: dict, n_regions: int, length: int, jitter: int) -> list[Region]:
    """n_regions windows of length +- jitter, spread evenly over the contigs (one slot per region, random offset)."""
    names = list(contigs)
    per_contig = -(-n_regions // len(names))
    regions = []
    for i in range(n_regions):
        contig = names[i // per_contig]
        slot = (len(contigs[contig]) - N_RUN) // per_contig
        size = int(length + rng.integers(-jitter, jitter + 1))
        if size + 10 > slot:
            raise ValueError(
                f"region_length {length} does not fit {per_contig} regions per contig; raise contig_length"
            )
        start = N_RUN + (i % per_contig) * slot + int(rng.integers(0, slot - size))
        regions.append(Region(contig, start, start + size, f"region{i + 1:02d}", i + 1))
    return regions


def place_sites(
    rng: np.random.Generator,
    contigs: dict,
    regions: list[Region],
    *,
    variants_per_region: int,
    causal_per_region: list[int],
    causal_maf: tuple[float, float],
    indel_fraction: float,
    max_indel_len: int,
    multiallelic_fraction: float,
) -> tuple[list[Site], list[Site]]:
    """(all sites in VCF order, causal SNVs). Sites are spaced max_indel_len + 2 apart so none overlap."""
    sites, causal = [], []
    gap = max_indel_len + 2
    for ri, r in enumerate(regions):
        n_causal = causal_per_region[ri]
        n = max(variants_per_region, n_causal)
        candidates = rng.permutation(np.arange(r.start + 1, r.end - gap))
        chosen: list[int] = []
        for p in candidates:
            if all(abs(int(p) - q) >= gap for q in chosen):
                chosen.append(int(p))
            if len(chosen) == n:
                break
        seq = contigs[r.contig]
        for k, p in enumerate(chosen):  # the first n_causal positions are the causal SNVs
            ref_base = seq[p].upper()
            if k < n_causal:
                alt = str(rng.choice([b for b in "ACGT" if b != ref_base]))
                site = Site("", r.contig, p, ref_base, (alt,), (float(rng.uniform(*causal_maf)),), ri)
                causal.append(site)
            else:
                site = _random_site(rng, seq, r.contig, p, ri, indel_fraction, max_indel_len, multiallelic_fraction)
            sites.append(site)
    order = {name: i for i, name in enumerate(contigs)}  # VCF order = header contig order, then position
    sites.sort(key=lambda s: (order[s.contig], s.start))
    for i, s in enumerate(sites):
        s.id = f"dv{i + 1:05d}"
    return sites, causal


def _random_site(rng, seq, contig, p, ri, indel_fraction, max_indel_len, multiallelic_fraction) -> Site:
    maf = float(np.clip(rng.beta(0.5, 1.5) * 0.5, 0.01, 0.5))  # many rare, some common
    ref_base = seq[p].upper()
    u = rng.random()
    if u < indel_fraction / 2:  # insertion after the anchor base
        ins = "".join(rng.choice(BASES, size=int(rng.integers(1, max_indel_len + 1))))
        return Site("", contig, p, ref_base, (ref_base + ins,), (maf,), ri)
    if u < indel_fraction:  # deletion of 1..max_indel_len bases after the anchor
        d = int(rng.integers(1, max_indel_len + 1))
        return Site("", contig, p, seq[p : p + d + 1].upper(), (ref_base,), (maf,), ri)
    others = [b for b in "ACGT" if b != ref_base]
    if rng.random() < multiallelic_fraction:
        a1, a2 = rng.choice(others, size=2, replace=False)
        return Site("", contig, p, ref_base, (str(a1), str(a2)), (maf, float(rng.uniform(0.01, maf))), ri)
    return Site("", contig, p, ref_base, (str(rng.choice(others)),), (maf,), ri)


def draw_haplotypes(rng: np.random.Generator, sites: list[Site], n_subjects: int, missing_rate: float) -> np.ndarray:
    """(V, S, 2) int8 allele indices, -1 = missing; each haplotype drawn independently from the site's frequencies."""
    width = max(len(s.freqs) for s in sites)
    cum = np.empty((len(sites), width))  # (V, A) cumulative ALT frequencies, padded with the last value
    for v, s in enumerate(sites):
        c = np.cumsum(s.freqs)
        cum[v] = np.concatenate([c, np.full(width - len(c), c[-1])])
    u = rng.random((len(sites), n_subjects, 2))  # (V, S, 2)
    below = u[..., None] < cum[:, None, None, :]  # (V, S, 2, A)
    out = np.where(below.any(-1), below.argmax(-1) + 1, 0).astype(np.int8)  # first ALT whose bound exceeds u; else REF
    if missing_rate > 0:
        out[rng.random(out.shape) < missing_rate] = -1
    return out


def write_reference(path: Path, contigs: dict, width: int = 60) -> None:
    with open(path, "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name}\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    pysam.faidx(str(path))


def write_regions(path: Path, regions: list[Region]) -> None:
    with open(path, "w") as fh:
        fh.writelines(f"{r.contig}\t{r.start}\t{r.end}\t{r.name}\n" for r in regions)


def write_vcf(path: Path, contigs: dict, sites: list[Site], alleles: np.ndarray, samples: list[str]) -> None:
    """Phased GTs (alleles (V, S, 2), -1 = '.') to a bgzipped VCF at `path` (.vcf.gz) with a tabix index."""
    header = pysam.VariantHeader()
    for name, seq in contigs.items():
        header.add_line(f"##contig=<ID={name},length={len(seq)}>")
    header.add_line('##INFO=<ID=AF,Number=A,Type=Float,Description="Population ALT allele frequency (simulated)">')
    header.add_line('##FORMAT=<ID=GT,Number=1,Type=String,Description="Phased genotype">')
    for s in samples:
        header.add_sample(s)
    with pysam.VariantFile(str(path), "wz", header=header) as vf:
        for v, site in enumerate(sites):
            rec = vf.new_record(contig=site.contig, start=site.start, alleles=(site.ref, *site.alts), id=site.id)
            rec.info["AF"] = tuple(round(f, 4) for f in site.freqs)
            for j, smp in enumerate(rec.samples.values()):
                a, b = alleles[v, j]
                smp["GT"] = (None if a < 0 else int(a), None if b < 0 else int(b))
                smp.phased = True
            vf.write(rec)
    pysam.tabix_index(str(path), preset="vcf", force=True)
