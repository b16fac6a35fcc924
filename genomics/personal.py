"""Personal haplotype sequences: a reference FASTA + a phased multi-sample VCF, for the regions of a BED (pysam).

    haps = PersonalHaplotypes("ref.fa", "cohort.vcf.gz", "regions.bed")
    hap1, hap2 = haps.haplotypes("sub-0001", region_index)      # two strings, reference case kept

Semantics follow `bcftools consensus -H 1` / `-H 2` (the ported rules live in `genomics.consensus`):
- each haplotype applies the allele its GT lists at that position (ALT index for multi-allelic sites);
- missing alleles ('.') keep the reference; a haploid GT applies to haplotype 1 only (haplotype 2 keeps the reference,
  as `bcftools consensus -H 2` does, with a warning);
- unphased heterozygous genotypes are treated as phased in the listed order (bcftools -H 1/-H 2 does the same); a
  warning names the first such sample once;
- a variant overlapping an earlier applied variant on the same haplotype is skipped with a warning, as bcftools does;
- deviations from bcftools, by design: variants only partly inside a region are skipped and counted (bcftools trims
  them); symbolic ALTs (<DEL>, <INS>, <*>, *, breakends) are skipped and counted;
- REF alleles that disagree with the FASTA raise (bcftools errors too): the VCF and FASTA are different builds.
Soft-masked (lowercase) reference bases keep their case; an applied allele takes the case of the reference base at
its first position (bcftools rule). Upper-casing is the tokenizer's job.

For a cohort, each region's records are read once into a genotype matrix (V, S, 2) and every sample's haplotypes are
built from it; haplotypes are cached per region by their allele vector (identical haplotypes are built once).
Handles open lazily and are dropped on pickling, so instances can go to dataloader workers.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genomics.consensus import ConsensusWarning, Variant, apply_variants, is_symbolic
from genomics.regions import Region, naming_hint, read_bed

__all__ = ["ConsensusWarning", "PersonalHaplotypes", "RegionGenotypes", "Variant", "apply_variants"]

MISSING, ABSENT = -1, -2  # allele codes in the genotype matrix: '.' call, no such allele (haploid GT)
_CACHE_MAX = 4096  # cached haplotypes per region before the cache is cleared


@dataclass
class RegionGenotypes:
    """Every VCF record overlapping one region and all samples' alleles at them."""

    region: Region
    variants: list[Variant]  # in VCF order
    alleles: np.ndarray  # (V, S, 2) int16: allele index, MISSING or ABSENT
    unphased_het: dict[int, str]  # sample column -> first site with an unphased heterozygous call
    n_partial: int = 0  # sites only partly inside the region (skipped)
    n_symbolic: int = 0  # sites with a symbolic ALT (skipped when carried)
    cache: dict = field(default_factory=dict, repr=False)  # allele vector bytes -> haplotype string
    ref_seq: str | None = field(default=None, repr=False)  # the region's reference sequence, once read

    def growth(self) -> int:
        """Upper bound on how much longer than the region a haplotype can get (sum of the largest insertions)."""
        end = self.region.end
        total = 0
        for v in self.variants:
            if v.start < self.region.start or v.start + len(v.ref) > end:
                continue
            lens = [len(a) for a in (v.alts or ()) if not is_symbolic(a)]
            total += max([0, *[n - len(v.ref) for n in lens]])
        return total


class PersonalHaplotypes:
    """Both haplotypes of any VCF sample for each region; see the module docstring for the rules."""

    def __init__(
        self,
        reference: str | Path,
        vcf: str | Path,
        regions: str | Path | Sequence[Region],
        *,
        samples: Sequence[str] | None = None,  # restrict to these VCF samples (faster on large VCFs)
    ):
        self.reference, self.vcf = Path(reference), Path(vcf)
        self.regions = list(regions) if isinstance(regions, list | tuple) else read_bed(regions)
        self.sample_subset = list(samples) if samples is not None else None
        self._fasta = self._vf = None
        self._samples: list[str] | None = None
        self._index: dict[str, int] = {}
        self._genotypes: dict[int, RegionGenotypes] = {}
        self._warned: set[str] = set()

    # --- handles (lazy, per process) ---
    def __getstate__(self):
        return {**self.__dict__, "_fasta": None, "_vf": None, "_genotypes": {}}

    def _open(self):
        if self._vf is None:
            import pysam

            for path, what in ((self.reference, "reference FASTA"), (self.vcf, "VCF")):
                if not path.exists():
                    raise FileNotFoundError(f"{what} not found: {path}")
            self._fasta = pysam.FastaFile(str(self.reference))
            self._vf = pysam.VariantFile(str(self.vcf))
            if self.sample_subset is not None:
                self._vf.subset_samples(self.sample_subset)
            self._samples = list(self._vf.header.samples)
            self._index = {s: i for i, s in enumerate(self._samples)}
        return self._fasta, self._vf

    def close(self) -> None:
        for h in (self._fasta, self._vf):
            if h is not None:
                h.close()
        self._fasta = self._vf = None

    @property
    def samples(self) -> list[str]:
        self._open()
        return list(self._samples)

    def sample_index(self, sample: str) -> int:
        self._open()
        if sample not in self._index:
            raise KeyError(f"subject {sample!r} is not a sample of the VCF {self.vcf}")
        return self._index[sample]

    # --- genotypes, read once per region ---
    def region_genotypes(self, i: int) -> RegionGenotypes:
        if i not in self._genotypes:
            _, vf = self._open()
            if vf.index is None:  # unindexed: one pass over the file fills every region
                self._read_all_unindexed(vf)
            else:
                r = self.regions[i]
                self._genotypes[i] = self._build(r, self._fetch(vf, r))
        return self._genotypes[i]

    def _fetch(self, vf, region: Region):
        if region.contig not in vf.header.contigs and region.contig not in (vf.index or {}):
            self._warn_once(
                f"contig:{region.contig}",
                f"{self.vcf}: no contig {region.contig!r} (BED line {region.line}); region {region.name} gets the "
                f"reference for every sample. {naming_hint([region.contig], vf.header.contigs)}",
            )
            return []
        try:
            return list(vf.fetch(region.contig, region.start, region.end))
        except ValueError:  # contig in the header but not in the index: no records there
            return []

    def _read_all_unindexed(self, vf) -> None:
        self._warn_once("unindexed", f"{self.vcf} has no index; reading it whole (bgzip + `tabix -p vcf` it)")
        by_region: dict[int, list] = {j: [] for j in range(len(self.regions))}
        by_contig: dict[str, list[int]] = {}
        for j, r in enumerate(self.regions):
            by_contig.setdefault(r.contig, []).append(j)
        vf.reset()
        for rec in vf:
            for j in by_contig.get(rec.chrom, ()):
                r = self.regions[j]
                if rec.start < r.end and rec.stop > r.start:
                    by_region[j].append(rec)
        for j, recs in by_region.items():
            self._genotypes[j] = self._build(self.regions[j], recs)

    def _build(self, region: Region, records) -> RegionGenotypes:
        n_s = len(self._samples)
        variants, rows, unphased = [], [], {}
        n_partial = n_symbolic = 0
        for rec in records:
            v = Variant.from_record(rec)
            if not v.alts:
                continue  # no ALT: nothing to apply
            if v.start < region.start or v.start + len(v.ref) > region.end:
                n_partial += 1
            if any(is_symbolic(a) for a in v.alts):
                n_symbolic += 1
            row = np.full((n_s, 2), MISSING, dtype=np.int16)
            for j, smp in enumerate(rec.samples.values()):
                gt = smp.get("GT") or ()
                for h in range(2):
                    if h >= len(gt):
                        row[j, h] = ABSENT
                    elif gt[h] is not None:
                        row[j, h] = gt[h]
                if len(gt) == 2 and not smp.phased and None not in gt and gt[0] != gt[1] and j not in unphased:
                    unphased[j] = f"{v.chrom}:{v.start + 1}"
            variants.append(v)
            rows.append(row)
        alleles = np.stack(rows) if rows else np.zeros((0, n_s, 2), dtype=np.int16)  # (V, S, 2)
        return RegionGenotypes(region, variants, alleles, unphased, n_partial, n_symbolic)

    # --- haplotypes ---
    def reference_sequence(self, i: int) -> str:
        fasta, _ = self._open()
        r = self.regions[i]
        if r.contig not in fasta.references:
            raise ValueError(
                f"BED line {r.line}: contig {r.contig!r} is not in the reference {self.reference}. "
                f"{naming_hint([r.contig], fasta.references)}"
            )
        seq = fasta.fetch(r.contig, r.start, r.end)
        if len(seq) != len(r):
            raise ValueError(f"BED line {r.line}: region {r.where} runs past the end of {r.contig} in {self.reference}")
        return seq

    def haplotypes(self, sample: str, i: int) -> tuple[str, str]:
        """The two haplotype strings of `sample` for region `i` (GT order)."""
        col = self.sample_index(sample)
        g = self.region_genotypes(i)
        if col in g.unphased_het:
            self._warn_once(
                f"unphased:{sample}",
                f"{self.vcf}: sample {sample!r} has unphased heterozygous genotypes (first at {g.unphased_het[col]}); "
                "treating them as phased in the listed order (as bcftools consensus -H 1/-H 2 does)",
            )
        out = []
        for h in range(2):
            column = g.alleles[:, col, h]  # (V,)
            key = column.tobytes()
            if key not in g.cache:
                if (column == ABSENT).any():
                    site = g.variants[int(np.argmax(column == ABSENT))]
                    self._warn_once(
                        "haploid",
                        f"{self.vcf}: haploid genotype at {site.chrom}:{site.start + 1} (sample {sample!r}); it is "
                        "applied to haplotype 1 only, haplotype 2 keeps the reference (bcftools -H 2 does the same)",
                    )
                if len(g.cache) >= _CACHE_MAX:
                    g.cache.clear()
                calls = [None if a < 0 else int(a) for a in column]
                if g.ref_seq is None:
                    g.ref_seq = self.reference_sequence(i)
                try:
                    g.cache[key] = apply_variants(g.ref_seq, g.region.start, g.variants, calls)
                except ValueError as err:
                    raise ValueError(f"{err} (VCF {self.vcf}, reference {self.reference})") from err
            out.append(g.cache[key])
        return out[0], out[1]

    def max_length(self) -> int:
        """Longest haplotype any sample can have: max over regions of (length + largest possible insertion growth)."""
        return max(len(r) + self.region_genotypes(i).growth() for i, r in enumerate(self.regions))

    def site_counts(self) -> Counter:
        """Sites skipped for every sample: partly outside their region / symbolic ALT (over regions read so far)."""
        c = Counter()
        for g in self._genotypes.values():
            c["partial"] += g.n_partial
            c["symbolic"] += g.n_symbolic
        return c

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, ConsensusWarning, stacklevel=3)
