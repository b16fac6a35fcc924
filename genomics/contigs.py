"""Contig naming between a reference FASTA, a VCF and a BED: 'chr1' <-> '1', 'chrM' <-> 'MT' (either direction).

    names = ContigNames.resolve(regions, fasta_contigs, vcf_contigs, bed="r.bed", fasta="ref.fa", vcf="c.vcf.gz")
    names.fasta("1") -> "chr1"        names.vcf("1") -> "1" (None: the VCF has no such contig: no variants there)
    names.renamed                     # [(source, name, used), ...]: every translation made; one info log line says so

A name matches itself first; otherwise the one name of the other file with the same `contig_key` (the name without
a leading 'chr', with M / MT the same contig). A region whose contig the FASTA has under no spelling raises
ContigError naming the BED line, the region and the files (a region cannot be built without its sequence).
`contig_key`, `match_contig` and `ContigNames` are what cohort checks use for the same rules
(`genomics.regions.naming_hint` words a hint from them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from genomics.errors import GenomicsInputError

log = logging.getLogger(__name__)

_MITO = {"M", "MT"}


class ContigError(GenomicsInputError):
    """A contig that none of the files has under any accepted spelling, or that matches two of them."""


def contig_key(name: str) -> str:
    """The spelling-independent key of a contig name: no 'chr' prefix (any case), 'M' and 'MT' both 'MT'."""
    key = name[3:] if name[:3].lower() == "chr" and len(name) > 3 else name
    return "MT" if key.upper() in _MITO else key


def match_contig(name: str, available: Iterable[str]) -> str | None:
    """`name` itself when available, else the one available name with the same contig_key, else None.

    Raises ContigError when two available names share the key (e.g. a FASTA with both 'chr1' and '1')."""
    available = list(available)
    if name in available:
        return name
    key = contig_key(name)
    hits = [a for a in available if contig_key(a) == key]
    if len(hits) > 1:
        raise ContigError(f"contig {name!r} matches several names {hits}; rename contigs so that one spelling is used")
    return hits[0] if hits else None


@dataclass
class ContigNames:
    """Per region contig: its name in the FASTA and in the VCF (None when the VCF lacks it)."""

    to_fasta: dict[str, str] = field(default_factory=dict)  # BED name -> FASTA name
    to_vcf: dict[str, str | None] = field(default_factory=dict)  # BED name -> VCF name or None
    renamed: list[tuple[str, str, str]] = field(default_factory=list)  # (file kind, BED name, name used there)

    def fasta(self, contig: str) -> str:
        return self.to_fasta[contig]

    def vcf(self, contig: str) -> str | None:
        return self.to_vcf[contig]

    @classmethod
    def resolve(
        cls,
        regions: Sequence,  # objects with .contig, .line, .name, .where (genomics.regions.Region)
        fasta_contigs: Iterable[str],
        vcf_contigs: Iterable[str],
        *,
        bed: str = "the regions",
        fasta: str = "the reference FASTA",
        vcf: str = "the VCF",
    ) -> ContigNames:
        """Translate every region's contig; ContigError naming the BED line(s) when the FASTA lacks one."""
        fasta_contigs, vcf_contigs = list(fasta_contigs), list(vcf_contigs)
        out, problems = cls(), []
        for r in regions:
            if r.contig in out.to_fasta:
                continue
            try:
                fa = match_contig(r.contig, fasta_contigs)
                vc = match_contig(r.contig, vcf_contigs)
            except ContigError as err:
                problems.append(f"{bed} line {r.line}: region {r.name} ({r.where}): {err}")
                continue
            if fa is None:
                where = "in neither" if vc is None else f"in {vcf} (as {vc!r}) but not in"
                problems.append(
                    f"{bed} line {r.line}: region {r.name} ({r.where}): contig {r.contig!r} is {where} {fasta}"
                    + (f" or {vcf}" if vc is None else "")
                    + f" under any spelling (tried {r.contig!r} and {_spellings(r.contig)})"
                )
                continue
            out.to_fasta[r.contig], out.to_vcf[r.contig] = fa, vc
            for kind, used in (("FASTA", fa), ("VCF", vc)):
                if used not in (None, r.contig):
                    out.renamed.append((kind, r.contig, used))
        if problems:
            raise ContigError(f"{len(problems)} region(s) on contigs the reference lacks:\n  " + "\n  ".join(problems))
        if out.renamed:
            shown = ", ".join(f"{b}->{n} ({k})" for k, b, n in out.renamed[:6])
            shown += ", ..." if len(out.renamed) > 6 else ""
            log.info("contig names harmonised between %s, %s and %s: %s", bed, fasta, vcf, shown)
        return out


def _spellings(name: str) -> str:
    key = contig_key(name)
    alts = {key, "chr" + key}
    if key == "MT":
        alts |= {"M", "chrM", "chrMT"}
    return ", ".join(repr(a) for a in sorted(alts - {name}))
