"""Personal haplotype sequences: a reference FASTA + a multi-sample VCF, for already parsed regions (pysam).

    haps = PersonalHaplotypes("ref.fa", "cohort.vcf.gz", read_bed("regions.bed"))
    hap1, hap2 = haps.haplotypes("sub-0001", region_index)      # two strings, reference case kept
    haps.write_fasta("sub-0001", "out/sub-0001.fa")             # '{region}|hap1', '{region}|hap2' records

Each haplotype equals `samtools faidx ref.fa CHR:START-END | bcftools consensus -s SAMPLE -H 1` (and -H 2) of
bcftools 1.20 or later, START-END the region 1-based inclusive; the rules are in `genomics.consensus`. In short:
- each haplotype applies the allele its GT slot lists (ALT index for multi-allelic sites), unphased GTs in the
  listed order (warned once per sample); unphased="iupac" is `-H 1pIu` / `-H 2pIu`: an unphased GT gives both
  haplotypes the IUPAC merge of its alleles (A/G -> R);
- missing alleles ('.', and the absent second allele of a haploid call) keep the reference; missing="N" is `-M N`:
  the record's first base becomes N instead; a haploid call of an all-haploid record applies to haplotype 1 only;
- a variant overlapping an earlier applied one on the same haplotype is skipped with a warning;
- variants reaching across a region edge are trimmed to the region;
- REF alleles that disagree with the FASTA raise (naming CHR:POS, both alleles and both files);
- soft-masked (lowercase) bases keep their case; an applied allele takes the case of the base at its first position.
Not bcftools, by design: symbolic ALTs (<DEL>, <INS>, <*>, *, breakends) are skipped. (bcftools before 1.20 skips a
deletion that starts before the region instead of trimming it.)
Contig names may differ between BED, FASTA and VCF in spelling ('chr1' / '1', 'chrM' / 'MT'): `genomics.contigs`
translates them (one info log line); a region on a contig the FASTA lacks raises ContigError naming its BED line.

For a cohort, each region's records are read once into a (V, S, 2) matrix of the allele each haplotype applies, and
haplotypes are cached per region by that allele vector (identical haplotypes are built once), with the offset of each
VCF site in them (`site_offsets`: a coordinate map through the indels before it; `reference_site_offsets`). Handles
open lazily and are dropped on pickling, so instances can go to dataloader workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genomics.consensus import (
    END,
    MISSING,
    ConsensusWarning,
    Variant,
    apply_edits,
    apply_variants,
    is_symbolic,
    make_edit,
    pick_allele,
    reference_to_haplotype,
)
from genomics.contigs import ContigError, ContigNames
from genomics.errors import GenomicsFileNotFound, ReferenceMismatch, SampleNotFound
from genomics.fasta_io import write_fasta
from genomics.regions import Region

__all__ = ["ConsensusWarning", "ContigError", "PersonalHaplotypes", "RegionGenotypes", "Variant", "apply_variants"]

NOTHING, MISSING_CODE, STRING_BASE = 0, -1, -2  # codes: 0 nothing, k ALT k, -1 missing char, <= -2 a merged allele
_CACHE_MAX = 4096  # cached haplotypes per region before the cache is cleared
UNPHASED = ("gt_order", "iupac")


@dataclass
class RegionGenotypes:
    """Every VCF record overlapping one region and the allele each sample's haplotypes apply there."""

    region: Region
    variants: list[Variant]  # in VCF order
    codes: np.ndarray  # (V, S, 2) int32: see NOTHING / MISSING_CODE / STRING_BASE
    strings: list[str]  # merged (IUPAC) alleles, code STRING_BASE - i
    unphased_het: dict[int, str]  # sample column -> first site with an unphased heterozygous call
    haploid: dict[int, str]  # sample column -> first site where haplotype 2 has no allele of its own
    cache: dict = field(default_factory=dict, repr=False)  # code vector bytes -> haplotype string
    offsets: dict = field(default_factory=dict, repr=False)  # code vector bytes -> (V,) site offsets in it
    ref_seq: str | None = field(default=None, repr=False)  # the region's reference sequence, once read

    def growth(self) -> int:
        """Upper bound on how much longer than the region a haplotype can get (sum of the largest insertions)."""
        start, end, total = self.region.start, self.region.end, 0
        for v in self.variants:
            best = 0
            for a in v.alts or ():
                if is_symbolic(a):
                    continue
                ref_len, alt_len = len(v.ref), len(a)
                if v.start < start:  # trimmed at the start: both alleles lose the bases before the region
                    k = start - v.start
                    ref_len, alt_len = ref_len - k, max(alt_len - k, 1)
                if v.start + len(v.ref) > end:  # cut at the end: ALT no longer than what is left of REF
                    alt_len = min(alt_len, ref_len - (v.start + len(v.ref) - end))
                best = max(best, alt_len - ref_len)
            total += best
        return total


class PersonalHaplotypes:
    """Both haplotypes of any VCF sample for each region; see the module docstring for the rules."""

    def __init__(
        self,
        reference: str | Path,
        vcf: str | Path,
        regions: Sequence[Region],  # parsed once by the caller (genomics.regions.read_bed)
        *,
        samples: Sequence[str] | None = None,  # restrict to these VCF samples
        unphased: str = "gt_order",  # "gt_order" (-H 1/-H 2) | "iupac" (-H 1pIu/-H 2pIu)
        missing: str = "ref",  # "ref" | one character for missing alleles (-M N)
        bed: str | Path | None = None,  # where the regions came from, for messages
    ):
        if isinstance(regions, str | Path):
            raise TypeError(
                f"regions must be parsed Region objects, got the path {str(regions)!r}; "
                "parse the BED once with genomics.regions.read_bed and pass the list"
            )
        if unphased not in UNPHASED:
            raise ValueError(f"unphased must be one of {UNPHASED}, got {unphased!r}")
        if missing != "ref" and (len(missing) != 1 or missing.isspace() or missing in ">,"):
            raise ValueError(f"missing must be 'ref' or one character such as 'N', got {missing!r}")
        self.reference, self.vcf = Path(reference), Path(vcf)
        self.regions = list(regions)
        self.bed = str(bed) if bed is not None else "the regions"
        self.unphased, self.missing = unphased, missing
        self.sample_subset = list(samples) if samples is not None else None
        self._fasta = self._vf = self._names = None
        self._samples: list[str] | None = None
        self._columns: list[int] = []  # VCF column of each sample in self._samples
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
                    raise GenomicsFileNotFound(f"{what} not found: {path}")
            fasta, vf = pysam.FastaFile(str(self.reference)), pysam.VariantFile(str(self.vcf))
            vcf_contigs = [*vf.header.contigs, *(c for c in (vf.index or ()) if c not in vf.header.contigs)]
            all_samples = list(vf.header.samples)
            wanted = all_samples if self.sample_subset is None else self.sample_subset
            try:
                files = {"bed": self.bed, "fasta": str(self.reference), "vcf": str(self.vcf)}
                names = ContigNames.resolve(self.regions, fasta.references, vcf_contigs, **files)
                unknown = [s for s in wanted if s not in all_samples]
                if unknown:
                    raise SampleNotFound(
                        f"samples {unknown[:5]} are not samples of the VCF {self.vcf}; check the sample list or "
                        "the VCF header (`bcftools query -l`)"
                    )
            except (ContigError, KeyError):
                fasta.close()
                vf.close()
                raise
            column = {s: j for j, s in enumerate(all_samples)}
            self._samples, self._columns = list(wanted), [column[s] for s in wanted]
            self._index = {s: i for i, s in enumerate(self._samples)}
            self._fasta, self._vf, self._names = fasta, vf, names
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
            raise SampleNotFound(
                f"subject {sample!r} is not a sample of the VCF {self.vcf} (`bcftools query -l` lists them)"
            )
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
        contig = self._names.vcf(region.contig)
        if contig is None:
            self._warn_once(
                f"contig:{region.contig}",
                f"{self.vcf}: no contig {region.contig!r} under any spelling (region {region.name}, line "
                f"{region.line}); it gets the reference for every sample",
            )
            return []
        try:
            return list(vf.fetch(contig, region.start, region.end))
        except ValueError:  # contig in the header but not in the index: no records there
            return []

    def _read_all_unindexed(self, vf) -> None:
        self._warn_once("unindexed", f"{self.vcf} has no index; reading it whole (bgzip + `tabix -p vcf` it)")
        by_region: dict[int, list] = {j: [] for j in range(len(self.regions))}
        by_contig: dict[str, list[int]] = {}
        for j, r in enumerate(self.regions):
            by_contig.setdefault(self._names.vcf(r.contig), []).append(j)
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
        variants, rows, strings, unphased, haploid = [], [], {}, {}, {}
        for rec in records:
            v = Variant.from_record(rec)
            if not v.alts and self.missing == "ref":
                continue  # nothing to apply
            site = f"{v.chrom}:{v.start + 1}"
            calls = [rec.samples[c] for c in self._columns]
            gts = [tuple(s.get("GT") or ()) if "GT" in s else None for s in calls]
            ploidy = max((len(g) for g in gts if g), default=0)
            if any(g is not None and len(g) < 2 for g in gts):  # the record's ploidy is over all VCF samples
                ploidy = max(len(s.get("GT") or ()) if "GT" in s else 0 for s in rec.samples.values())
            row = np.zeros((n_s, 2), dtype=np.int32)
            for j, (gt, smp) in enumerate(zip(gts, calls)):
                if not gt:
                    continue  # no GT: bcftools applies nothing
                slots = gt + (END,) * (ploidy - len(gt))
                unphased_gt = len(gt) == ploidy >= 2 and not smp.phased
                for h in (1, 2):
                    a = pick_allele(v, slots, unphased_gt, h, unphased=self.unphased, missing=self.missing)
                    if isinstance(a, str) and a != MISSING:
                        row[j, h - 1] = STRING_BASE - strings.setdefault(a, len(strings))
                    elif a == MISSING:
                        row[j, h - 1] = MISSING_CODE
                    else:
                        row[j, h - 1] = a or NOTHING
                if len(gt) < 2 and gt[0] is not None and j not in haploid:
                    haploid[j] = site
                het = len(gt) == 2 and None not in gt and gt[0] != gt[1]
                if het and not smp.phased and j not in unphased:
                    unphased[j] = site
            variants.append(v)
            rows.append(row)
        codes = np.stack(rows) if rows else np.zeros((0, n_s, 2), dtype=np.int32)  # (V, S, 2)
        return RegionGenotypes(region, variants, codes, list(strings), unphased, haploid)

    # --- haplotypes ---
    def reference_sequence(self, i: int) -> str:
        fasta, _ = self._open()
        r = self.regions[i]
        contig = self._names.fasta(r.contig)
        seq = fasta.fetch(contig, r.start, r.end)
        if len(seq) != len(r):
            raise ValueError(f"BED line {r.line}: region {r.where} runs past the end of {contig} in {self.reference}")
        return seq

    def haplotypes(self, sample: str, i: int) -> tuple[str, str]:
        """The two haplotype strings of `sample` for region `i` (GT order)."""
        col = self.sample_index(sample)
        g = self.region_genotypes(i)
        if col in g.unphased_het and self.unphased == "gt_order":
            self._warn_once(
                f"unphased:{sample}",
                f"{self.vcf}: sample {sample!r} has unphased heterozygous genotypes (first at {g.unphased_het[col]}); "
                "treating them as phased in the listed order (as bcftools consensus -H 1/-H 2 does)",
            )
        if col in g.haploid:
            self._warn_once(
                f"haploid:{sample}",
                f"{self.vcf}: sample {sample!r} has haploid genotypes (first at {g.haploid[col]}); haplotype 2 keeps "
                "the reference there (or the missing character), as bcftools consensus -H 2 does",
            )
        out = [g.cache[self._build_haplotype(g, i, g.codes[:, col, h])] for h in range(2)]
        return out[0], out[1]

    def site_offsets(self, sample: str, i: int) -> np.ndarray:
        """(2, V) int64, haplotypes in GT order: where each VCF site of region i (RegionGenotypes.variants, VCF order)
        sits in that haplotype's string: the offset of the site's first REF base (clipped to the region) after the
        edits before it. A base deleted by an earlier applied record maps to the last base kept before it; a site's
        own insertion follows its anchor. The coordinate map of genomics.consensus.apply_edits(origin=...)."""
        self.haplotypes(sample, i)  # warnings, and both haplotypes built
        col, g = self.sample_index(sample), self.region_genotypes(i)
        return np.stack([g.offsets[self._build_haplotype(g, i, g.codes[:, col, h])] for h in range(2)])

    def reference_site_offsets(self, i: int) -> np.ndarray:
        """(V,) int64: offset of each VCF site of region i in the reference sequence of the region (clipped to it)."""
        g, r = self.region_genotypes(i), self.regions[i]
        starts = np.array([v.start - r.start for v in g.variants], dtype=np.int64)
        return np.clip(starts, 0, max(len(r) - 1, 0))

    def _build_haplotype(self, g: RegionGenotypes, i: int, column: np.ndarray) -> bytes:
        """Build (once) the haplotype of one allele vector (V,) and its site offsets; returns its cache key."""
        key = column.tobytes()
        if key not in g.cache:
            if len(g.cache) >= _CACHE_MAX:
                g.cache.clear()
                g.offsets.clear()
            if g.ref_seq is None:
                g.ref_seq = self.reference_sequence(i)
            edits = [self._edit(g, k, int(c)) for k, c in enumerate(column) if c != NOTHING]
            origin: list[int] = []
            try:
                g.cache[key] = apply_edits(g.ref_seq, g.region.start, edits, origin=origin)
            except ReferenceMismatch as err:
                raise ReferenceMismatch(f"{err} (VCF {self.vcf}, reference {self.reference})") from err
            g.offsets[key] = reference_to_haplotype(origin, len(g.ref_seq))[self.reference_site_offsets(i)]
        return key

    def _edit(self, g: RegionGenotypes, k: int, code: int):
        v = g.variants[k]
        if code == MISSING_CODE:
            return make_edit(v, MISSING, self.missing)
        return make_edit(v, code if code > 0 else g.strings[STRING_BASE - code])

    def fasta_records(self, sample: str) -> Iterator[tuple[str, str]]:
        """('{region}|hap1', seq), ('{region}|hap2', seq) for every region, in region order."""
        for i, r in enumerate(self.regions):
            for h, seq in enumerate(self.haplotypes(sample, i), start=1):
                yield f"{r.name}|hap{h}", seq

    def write_fasta(self, sample: str, path: str | Path, *, width: int = 60) -> Path:
        """`sample`'s haplotypes of every region to one FASTA (atomically; see genomics.fasta_io)."""
        self.sample_index(sample)
        return write_fasta(path, self.fasta_records(sample), width=width)

    def max_length(self) -> int:
        """Longest haplotype any sample can have: max over regions of (length + largest possible insertion growth)."""
        return max(len(r) + self.region_genotypes(i).growth() for i, r in enumerate(self.regions))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, ConsensusWarning, stacklevel=3)
