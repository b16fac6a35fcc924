"""Genotype sources: one interface over VCF/BCF (pysam) and PLINK 2 / PLINK 1 binary sets (genomics.plink, pgenlib).

References: VCF v4.3 specification (GT field); PLINK 2 file formats (.pgen/.pvar/.psam; .bed/.bim/.fam),
https://www.cog-genomics.org/plink/2.0/formats; Chang et al. 2015 (PLINK 2).

    with open_genotypes("cohort.pgen") as source:        # the format is told by the file (module notes below)
        source.samples                                   # list[str]: VCF sample names, or .psam / .fam IIDs (N axis)
        source.contigs                                   # set[str]: contig names as the file spells them
        for i, variant in source.variants(regions): ...  # region index, Variant (no genotypes read)
        for variant, alleles in source.genotypes(regions):
            alleles                                      # (N, P) int16 allele index per sample and slot: 0 = REF,
                                                         # k = k-th ALT, MISSING, or NO_ALLELE (a haploid call's
                                                         # absent second slot; VCF only)

Variants are those whose first base is inside a region (0-based `start <= pos0 < end`), region by region, file
order within a region; a variant inside two overlapping regions comes once per region (callers deduplicate).
Contig names are matched with genomics.contigs.match_contig ('chr1' <-> '1', 'chrM' <-> 'MT').

Format (`genotype_format`): `.vcf`, `.vcf.gz`, `.vcf.bgz`, `.bcf` are VCF/BCF (indexed: `tabix -p vcf` or
`bcftools index`); `.pgen` is PLINK 2 and needs `.pvar` (or the zstd-compressed `.pvar.zst` that `plink2 --make-pgen
vzs` writes and large releases ship; read through the `zstandard` package) and `.psam` beside it; `.bed` is PLINK 1
and needs `.bim` and `.fam` beside it (and PLINK's magic bytes): a regions BED given here is refused, never read as
genotypes.
PLINK sets store every call as two alleles: a haploid call reads as homozygous (ALT dosage 2, PLINK's own convention),
where the VCF path reads it as one allele. Allele order of PLINK 1: .bim column 5 (A1) is read as the ALT and column
6 (A2) as the REF, which is what `plink2 --make-bed` writes from a VCF (and what pgenlib assumes); PLINK 1.9 without
`--keep-allele-order` makes A1 the minor allele instead, which the cohort check's REF-vs-FASTA comparison reports.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genomics.contigs import match_contig
from genomics.errors import GenomicsFileNotFound, GenomicsInputError
from genomics.regions import Region

MISSING = -1  # allele code of a missing call (any missing slot makes the call missing)
NO_ALLELE = -2  # the absent second slot of a haploid VCF call (not missing; counts no allele)
VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
PLINK_SIBLINGS = {"pgen": (".pvar", ".psam"), "bed": (".bim", ".fam")}  # format -> the files it needs beside it
ZSTD_SIBLINGS = {".pvar"}  # siblings that may be zstd-compressed instead (`<prefix>.pvar.zst`, plink2's `vzs`)
PLINK1_MAGIC = b"\x6c\x1b\x01"  # the first bytes of a variant-major PLINK 1 .bed


@dataclass(frozen=True)
class Variant:
    contig: str  # as the genotype file names it (PLINK: 1..22, X, Y, MT; numeric 23/24/26 read as X/Y/MT)
    pos: int  # 1-based
    id: str  # "." when absent
    ref: str
    alts: tuple[str, ...]  # ALT alleles in file order (allele index k = alts[k - 1]); () when none
    line: int | None = None  # its line in the variant file (.pvar / .bim); None for VCF records

    @property
    def start(self) -> int:
        return self.pos - 1  # 0-based


class GenotypeSource(ABC):
    """A genotype file opened for reading (module docstring); a context manager."""

    format: str  # "vcf", "pgen" or "bed"

    def __init__(self, path: Path):
        self.path = path

    @property
    @abstractmethod
    def samples(self) -> list[str]: ...

    @property
    def samples_file(self) -> Path:
        """The file that lists the samples (the VCF itself, or the .psam / .fam)."""
        return self.path

    @property
    def variants_file(self) -> Path:
        """The file that lists the variants (the VCF itself, or the .pvar / .bim)."""
        return self.path

    @property
    @abstractmethod
    def contigs(self) -> set[str]: ...

    @abstractmethod
    def variants(self, regions: Sequence[Region], limit: int | None = None) -> Iterator[tuple[int, Variant]]:
        """(region index, variant) of every variant inside a region; at most `limit` of them."""

    @abstractmethod
    def genotypes(self, regions: Sequence[Region]) -> Iterator[tuple[Variant, np.ndarray]]:
        """(variant, (N, P) int16 allele codes) of every variant inside a region."""

    def close(self) -> None:  # noqa: B027  (sources without handles keep the default)
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plink_sibling(path: Path, suffix: str) -> Path | None:
    """The sibling file `suffix` of a PLINK set (`<prefix><suffix>`, else `<prefix><suffix>.zst` for ZSTD_SIBLINGS,
    the order plink2 --pfile looks in); None when neither is there."""
    for candidate in (path.with_suffix(suffix), path.with_suffix(suffix + ".zst")):
        if candidate.is_file():
            return candidate
        if suffix not in ZSTD_SIBLINGS:
            break
    return None


def plink_files(path: Path, fmt: str) -> tuple[Path, Path]:
    """(variant file, sample file) of the PLINK set `path` ("pgen" or "bed"); GenomicsInputError naming what is
    missing (a .bed without .bim/.fam is taken for a regions BED given by mistake)."""
    siblings = PLINK_SIBLINGS[fmt]
    found = [plink_sibling(path, s) for s in siblings]
    absent = [path.with_suffix(s).name for s, f in zip(siblings, found) if f is None]
    if absent and fmt == "bed":
        raise GenomicsInputError(
            f"{path}: a PLINK 1 .bed needs {' and '.join(absent)} beside it, and none is there; if this is "
            "a regions BED, it belongs in data.regions, not data.genotypes"
        )
    if absent:
        raise GenomicsInputError(
            f"{path}: a PLINK 2 .pgen needs {' and '.join(absent)} beside it (the variants may be {path.stem}.pvar.zst)"
        )
    return found[0], found[1]


def genotype_format(path: str | Path) -> str:
    """ "vcf", "pgen" or "bed" from the file name and its siblings; GenomicsInputError naming what is missing."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(VCF_SUFFIXES):
        return "vcf"
    for fmt in PLINK_SIBLINGS:
        if name.endswith("." + fmt):
            plink_files(path, fmt)
            return fmt
    raise GenomicsInputError(
        f"{path}: not a genotype file name; use a VCF/BCF (.vcf.gz, .bcf), a PLINK 2 .pgen (with .pvar and .psam) "
        "or a PLINK 1 .bed (with .bim and .fam)"
    )


def open_genotypes(path: str | Path) -> GenotypeSource:
    """The genotype source of `path` (format from genotype_format); GenomicsInputError when it cannot be read."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GenomicsFileNotFound(f"{path}: genotype file not found")
    fmt = genotype_format(path)
    if fmt == "vcf":
        return VcfGenotypes(path)
    from genomics.plink import PlinkGenotypes

    return PlinkGenotypes(path, fmt)


class VcfGenotypes(GenotypeSource):
    """A VCF/BCF read with pysam over its index (regions are fetched)."""

    format = "vcf"

    def __init__(self, path: Path):
        import pysam

        super().__init__(path)
        try:
            self._vf = pysam.VariantFile(str(path))
        except (OSError, ValueError) as err:
            raise GenomicsInputError(f"{path}: not a readable VCF/BCF ({err})") from err
        self._samples = list(self._vf.header.samples)  # (also after close)

    @property
    def samples(self) -> list[str]:
        return list(self._samples)

    @property
    def contigs(self) -> set[str]:
        names = set(self._vf.header.contigs)
        return names | set(self._vf.index) if self._vf.index is not None else names

    def _records(self, regions: Sequence[Region]):
        if self._vf.index is None:
            raise GenomicsInputError(
                f"{self.path}: the VCF has no index; bgzip it and run `tabix -p vcf {self.path.name}` "
                f"(BCF: `bcftools index {self.path.name}`)"
            )
        contigs = self.contigs
        for i, region in enumerate(regions):
            contig = match_contig(region.contig, contigs)
            if contig is None:
                continue  # no records on that contig (the cohort check reports naming problems)
            try:
                records = self._vf.fetch(contig, region.start, region.end)
            except ValueError:  # in the header but not in the index: no records
                continue
            for rec in records:
                if region.start <= rec.start < region.end:  # fetch also returns records only overlapping it
                    yield i, rec

    @staticmethod
    def _variant(rec) -> Variant:
        return Variant(rec.chrom, rec.pos, rec.id or ".", rec.ref or "", tuple(rec.alts or ()))

    def variants(self, regions, limit=None):
        for n, (i, rec) in enumerate(self._records(regions)):
            if limit is not None and n >= limit:
                return
            yield i, self._variant(rec)

    def genotypes(self, regions):
        n = len(self._samples)
        for _, rec in self._records(regions):
            calls = [s.allele_indices for s in rec.samples.values()]  # per sample: tuple of allele indices
            alleles = np.full((n, max([2, *map(len, calls)])), NO_ALLELE, dtype=np.int16)  # (N, P)
            for j, call in enumerate(calls):
                if not call:
                    alleles[j, 0] = MISSING
                for k, a in enumerate(call):
                    alleles[j, k] = MISSING if a is None else a
            yield self._variant(rec), alleles

    def close(self) -> None:
        self._vf.close()
