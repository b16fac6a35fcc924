"""Genomic regions from a BED file (0-based, half-open; optional 4th column = name), checked against a reference.

    regions, problems = parse_bed(path)       # every bad line reported with its line number, good lines kept
    regions = read_bed(path)                  # the same, but any problem raises ValueError listing them all
    problems = check_contigs(regions, lengths, source="reference.fa")   # contigs absent / coordinates past the end

Contig naming ("chr1" vs "1", "chrM" vs "MT") is the most common mismatch between a VCF, a FASTA and a BED; the rules
live in `genomics.contigs`; `naming_hint` turns a set of unmatched names into a one-line hint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from genomics.contigs import ContigError, match_contig
from genomics.errors import GenomicsInputError


@dataclass(frozen=True)
class Region:
    contig: str
    start: int  # 0-based, inclusive
    end: int  # 0-based, exclusive
    name: str  # 4th BED column, or "contig:start-end" (1-based closed, samtools style) when absent
    line: int = 0  # line number in the BED file (1-based); 0 when built in code

    def __len__(self) -> int:
        return self.end - self.start

    @property
    def where(self) -> str:
        return f"{self.contig}:{self.start + 1}-{self.end}"


def parse_bed(path: str | Path) -> tuple[list[Region], list[str]]:
    """Regions of a BED file and the problems found (strings naming the file and line); bad lines are dropped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"regions BED not found: {path}")
    regions: list[Region] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:  # undecodable bytes: reported per line
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            if any("\udc80" <= ch <= "\udcff" for ch in line):
                problems.append(f"{path}:{lineno}: not UTF-8 text (is this a BED file?)")
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < 3:
                problems.append(f"{path}:{lineno}: expected at least 3 columns (contig, start, end), got {len(cols)}")
                continue
            contig, start_s, end_s = cols[0], cols[1], cols[2]
            try:
                start, end = int(start_s), int(end_s)
            except ValueError:
                problems.append(f"{path}:{lineno}: start/end must be integers, got {start_s!r}, {end_s!r}")
                continue
            if start < 0 or end <= start:
                problems.append(
                    f"{path}:{lineno}: bad coordinates {contig}\t{start}\t{end} (BED is 0-based half-open: "
                    "need 0 <= start < end)"
                )
                continue
            name = cols[3] if len(cols) > 3 and cols[3] not in ("", ".") else f"{contig}:{start + 1}-{end}"
            regions.append(Region(contig, start, end, name, lineno))
    if not regions and not problems:
        problems.append(f"{path}: no regions (the file has no data lines)")
    seen: dict[str, int] = {}
    for r in regions:
        if r.name in seen:
            problems.append(f"{path}:{r.line}: region name {r.name!r} repeats line {seen[r.name]}; make names unique")
        seen.setdefault(r.name, r.line)
    return regions, problems


def read_bed(path: str | Path) -> list[Region]:
    """Regions of a BED file; raises GenomicsInputError (a ValueError) listing every bad line."""
    regions, problems = parse_bed(path)
    if problems:
        raise GenomicsInputError(f"{len(problems)} problem(s) in the regions BED:\n  " + "\n  ".join(problems))
    return regions


def naming_hint(unmatched: Iterable[str], available: Iterable[str]) -> str:
    """A hint when names differ only in spelling ('chr' prefix, chrM vs MT; genomics.contigs rules); '' otherwise."""
    available = list(available)
    for c in sorted(set(unmatched)):
        try:
            hit = match_contig(c, available)
        except ContigError:
            continue
        if hit is None or hit == c:
            continue
        if hit == "chr" + c:
            how = "add the 'chr' prefix"
        elif c == "chr" + hit:
            how = "drop the 'chr' prefix"
        else:
            how = "the same contig in another spelling"
        return f"hint: {c!r} exists as {hit!r}: {how} (or rename contigs)"
    return ""


def check_contigs(
    regions: Iterable[Region], lengths: Mapping[str, int], *, bed: str, source: str, aliases: bool = False
) -> list[str]:
    """Problems of regions against contig lengths (of a FASTA): contig absent (with a naming hint), end past the end.

    aliases=True accepts a contig the FASTA has under another spelling ('1' for 'chr1', 'MT' for 'chrM'; see
    genomics.contigs), as genomics.personal does; the length check then uses that contig."""
    problems = []
    regions = list(regions)
    names = {}
    for r in regions:
        if r.contig not in names:
            try:
                exact = r.contig if r.contig in lengths else None
                names[r.contig] = match_contig(r.contig, lengths) if aliases else exact
            except ContigError as err:
                names[r.contig] = ""  # reported here, not again as absent
                problems.append(f"{bed}:{r.line}: {err}")
    absent = [r for r in regions if names[r.contig] is None]
    hint = naming_hint((r.contig for r in absent), lengths)
    for r in absent:
        problems.append(f"{bed}:{r.line}: contig {r.contig!r} is not in {source}" + (f"; {hint}" if hint else ""))
    for r in regions:
        name = names[r.contig]
        if name and r.end > lengths[name]:
            problems.append(
                f"{bed}:{r.line}: region {r.where} ends past the end of {name} ({lengths[name]} bp in {source})"
            )
    return problems
