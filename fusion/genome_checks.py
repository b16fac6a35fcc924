"""Checks of the genome inputs against each other, region by region, for fusion.cohort (library code).

    check_genome(vcf_path, vf, fasta, fasta_path, lengths, regions, problems, max_sites=200, alphabet=False)

REF alleles of the VCF records inside the regions are compared with the reference FASTA (each region's sequence is
fetched once): the first `max_sites` records in cheap mode (a wrong genome build shows up at once), every record
with max_sites=None (`python -m fusion.validate`), also without a VCF index (the file is then read once, whole).
alphabet=True also reports characters outside ACGTN (either case) in the regions' reference sequence: the tokenizer
would turn them into [UNK], which no model saw in training.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from fusion.cohort_checks import CohortFatal, Problem, match_or_none
from genomics.regions import Region

MAX_REF_CHECKS = 200  # cheap mode: VCF records compared with the FASTA
MAX_LISTED_SITES = 20  # mismatching sites listed one by one (the count covers all)
_DNA = np.zeros(256, dtype=bool)
_DNA[np.frombuffer(b"ACGTNacgtn", dtype=np.uint8)] = True


def check_genome(
    vcf_path: Path, vf, fasta, fasta_path: Path, lengths: dict[str, int], regions: list[Region], problems: list,
    max_sites: int | None = MAX_REF_CHECKS, alphabet: bool = False,
) -> None:  # fmt: skip
    """REF alleles vs the FASTA (see module docstring); with alphabet=True, non-DNA characters in the regions."""
    sequences = RegionSequences(fasta, lengths)
    if alphabet:
        for i, r in enumerate(regions):
            _check_alphabet(r, sequences(i, r), fasta_path, problems)
    if vf is None:
        return
    sites = (
        (i, r, rec.chrom, rec.start, rec.pos, rec.ref or "", tuple(rec.alts or ()), f"{vcf_path}:{rec.chrom}:{rec.pos}")
        for i, r, rec in _readable(_records_in_regions(vf, regions, max_sites), vcf_path)
    )
    report_ref_mismatches(vcf_path, *compare_refs(sites, sequences), fasta_path, problems)


class RegionSequences:
    """(region index, region) -> the region's reference sequence, fetched once."""

    def __init__(self, fasta, lengths: dict[str, int]):
        self.fasta, self.lengths = fasta, lengths
        self._cache: dict[int, str] = {}

    def __call__(self, i: int, r: Region) -> str:
        if i not in self._cache:
            name = match_or_none(r.contig, self.lengths)
            self._cache[i] = self.fasta.fetch(name, r.start, min(r.end, self.lengths[name])) if name else ""
        return self._cache[i]


def compare_refs(sites, sequences: RegionSequences) -> tuple[list[tuple], int]:
    """(mismatches [(where, chrom, pos, ref, fasta bases, alts)], sites checked) of the sites (region index, region,
    chrom, 0-based start, pos, REF, ALTs, where) against the FASTA."""
    mismatches, checked, lengths = [], 0, sequences.lengths
    for i, r, chrom, start, pos, ref, alts, where in sites:
        name = match_or_none(r.contig, lengths)
        if not ref or name is None or start + len(ref) > lengths[name]:
            continue
        checked += 1
        offset = start - r.start
        seq = sequences(i, r)
        fa = seq[offset : offset + len(ref)] if offset + len(ref) <= len(seq) else ""
        if len(fa) != len(ref):  # a REF running past the region's end
            fa = sequences.fasta.fetch(name, start, start + len(ref))
        if fa.upper() != ref.upper():
            mismatches.append((where, chrom, pos, ref, fa, alts))
    return mismatches, checked


def report_ref_mismatches(
    path: Path, mismatches: list[tuple], checked: int, fasta_path: Path, problems: list, swap_hint: str = ""
) -> None:  # fmt: skip
    """Problems for compare_refs' mismatches: the first MAX_LISTED_SITES one by one, then a count. `swap_hint`: said
    when some mismatching site has an ALT equal to the FASTA (REF and ALT exchanged, as PLINK 1 files can be)."""
    swapped = sum(_alt_matches(fa, alts) for _, _, _, _, fa, alts in mismatches)
    for where, chrom, pos, ref, fa, alts in mismatches[:MAX_LISTED_SITES]:
        if swap_hint and _alt_matches(fa, alts):
            message = f"REF {ref!r} differs from the reference FASTA {fasta_path} ({fa!r}) at {chrom}:{pos}, where "
            message += f"an ALT {list(alts)} equals it: REF and ALT look swapped; {swap_hint}"
        else:
            message = (
                f"REF {ref!r} differs from the reference FASTA {fasta_path} ({fa!r}) at {chrom}:{pos}: the VCF and "
                "the FASTA are probably from different genome builds (use the FASTA the VCF was called against, or "
                "lift the VCF over)"
            )
        problems.append(Problem("error", where, message))
    if len(mismatches) > MAX_LISTED_SITES:
        sites = ", ".join(f"{c}:{p}" for _, c, p, *_ in mismatches[MAX_LISTED_SITES : MAX_LISTED_SITES + 10])
        why = f" ({swapped} look REF/ALT-swapped: {swap_hint})" if swap_hint and swapped else ""
        problems.append(
            Problem(
                "error",
                str(path),
                f"{len(mismatches)} of {checked} checked REF alleles differ from {fasta_path} (the first "
                f"{MAX_LISTED_SITES} are listed; more: {sites} ...){why}",
            )
        )


def _alt_matches(fa: str, alts: tuple[str, ...]) -> bool:
    """Whether an ALT agrees with the FASTA bases at the site (over their common length: a swapped indel's ALT is
    shorter than the REF the FASTA was read for)."""
    fa = fa.upper()
    return any(a.upper()[: len(fa)] == fa[: len(a)] for a in alts if a not in ("*", "."))


def _readable(records, vcf_path: Path):
    """The records; a record htslib cannot parse is fatal for the VCF (CohortFatal naming how far it got)."""
    n = 0
    try:
        for item in records:
            n += 1
            yield item
    except (OSError, ValueError) as err:
        raise CohortFatal(
            f"{vcf_path}: a record after the {n} read in the regions cannot be parsed ({err}); find it with "
            f"`bcftools view {vcf_path.name} > /dev/null` and fix or drop it"
        ) from err


def _check_alphabet(r: Region, seq: str, fasta_path: Path, problems: list) -> None:
    codes = np.frombuffer(seq.encode("latin-1", errors="replace"), dtype=np.uint8)
    bad = np.flatnonzero(~_DNA[codes])
    if len(bad) == 0:
        return
    chars = sorted(set(seq[j] for j in bad[:1000]))
    first = r.start + int(bad[0]) + 1
    problems.append(
        Problem(
            "error",
            f"{fasta_path}:{r.contig}:{first}",
            f"region {r.name} (BED line {r.line}, {r.where}) has {len(bad)} character(s) outside the DNA alphabet "
            f"ACGTN, {chars[:10]}, the first at {r.contig}:{first}; they would become [UNK] tokens: replace them "
            "with N (e.g. IUPAC ambiguity codes) or use another reference FASTA",
        )
    )


def _records_in_regions(vf, regions: list[Region], limit: int | None):
    """(region index, region, record) for VCF records starting inside a region; at most `limit` records."""
    count = 0
    if vf.index is not None:
        index = set(vf.index)
        for i, r in enumerate(regions):
            contig = match_or_none(r.contig, index)
            if contig is None:
                continue
            try:
                records = vf.fetch(contig, r.start, r.end)
            except ValueError:  # contig in the header but not in the index
                continue
            for rec in records:
                if rec.start < r.start:
                    continue  # starts before the region (reported with the region it starts in, if any)
                if limit is not None and count >= limit:
                    return
                count += 1
                yield i, r, rec
        return
    if limit is not None:  # cheap mode: an unindexed VCF is not read whole (its warning says so)
        return
    by_contig: dict[str, list[tuple[int, int, int]]] = {}  # VCF contig -> sorted (start, end, region index)
    for i, r in enumerate(regions):
        by_contig.setdefault(r.contig, []).append((r.start, r.end, i))
    by_contig = {c: sorted(spans) for c, spans in by_contig.items()}
    names = {}
    for rec in vf:  # the whole file, once
        if rec.chrom not in names:
            names[rec.chrom] = match_or_none(rec.chrom, by_contig)
        spans = by_contig.get(names[rec.chrom]) or []
        j = bisect.bisect_right(spans, (rec.start, float("inf"), 0))
        for start, end, i in reversed(spans[:j]):
            if start <= rec.start < end:
                yield i, regions[i], rec
                break
