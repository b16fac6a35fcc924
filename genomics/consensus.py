"""One haplotype of one region from VCF records: the rules of `bcftools consensus` 1.20+ (htslib 1.22+), re-implemented.

    allele = pick_allele(variant, slots, unphased_gt, hap=1)          # what `-H 1` takes from one sample's GT
    edit = make_edit(variant, allele)                                  # (chrom, start, ref, alt) to apply, or None
    seq = apply_edits(ref_seq, region_start, edits, counts=Counter())  # the haplotype of the region
    seq = apply_variants(ref_seq, region_start, records, alleles)      # the same from ALT indices (0 = REF, None)
    where = reference_to_haplotype(origin, len(ref_seq))  # ref offset -> haplotype offset; apply_edits(origin=origin)

Choosing the allele (`bcftools consensus -s S -H 1|2`, `-H 1pIu|2pIu`, `-M C`), from the GT slots as htslib stores
them: a record has as many slots as its most ploid sample; a haploid sample's second slot is vector-end.
- -H h takes slot h. A missing slot ('.') or a vector-end slot (haploid sample, diploid record) is "missing": kept
  as the reference, or with -M C the record becomes REF[0] -> C (an ALT-less record longer than one base: all its
  bases -> C). A record with fewer slots than h (every sample haploid): missing when a slot is '.', else skipped.
- -H hpIu: when the GT is unphased (two or more alleles, not all joined by '|', as many as the record's ploidy),
  the allele is the IUPAC merge of the GT's alleles over the longest ALT among them (A/G -> R, A/AT -> AT,
  AT/A -> A), for both haplotypes. Other GTs follow -H h; a haploid GT counts as phased (htslib 1.22+, VCF 4.4;
  older htslib merges it, so -H 2pIu applied a haploid ALT to haplotype 2 as well).
Applying (per region, records in VCF order; positions 0-based):
- a record starting at or before the last REF base of the last applied record overlaps it and is skipped with a
  warning, except an indel anchored on that base (REF[0] == ALT[0]) after a non-insertion;
- a record starting before the region is trimmed to it: when the ALT reaches into the region both alleles lose the
  bases before it, else the record becomes a deletion of its REF bases inside the region (no REF check there);
- a record reaching past the region end is cut at the end (REF and ALT to the bases left inside);
- REF must equal the current sequence (case-insensitive), except for a record anchored on the last REF base of the
  previous applied one (its first base may differ); else ValueError naming CHR:POS and both alleles;
- the written allele takes the case of the sequence at its first base; an indel keeps its anchor base; an insertion
  does not overwrite an anchor base an earlier record at the same position changed, except in soft-masked sequence
  (bcftools compares the lower-cased ALT with REF there: G>T then G>GAA gives 'TAA' but 'gaa').
Not bcftools, by design: symbolic ALTs (<DEL>, <INS>, <*>, *, breakends) are skipped and counted (counts["symbolic"]).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from genomics.errors import GenomicsInputError, ReferenceMismatch

END = -2  # a vector-end GT slot (the sample has fewer alleles than the record's ploidy)
IUPAC = {1: "A", 2: "C", 3: "M", 4: "G", 5: "R", 6: "S", 7: "V", 8: "T", 9: "W", 10: "Y", 11: "H", 12: "K", 13: "D"}
IUPAC |= {14: "B", 15: "N"}
BITS = {c: b for b, c in IUPAC.items()}


class ConsensusWarning(UserWarning):
    """A variant skipped or a genotype reinterpreted while building personal sequences."""


class Variant(NamedTuple):
    chrom: str
    start: int  # 0-based position of the first REF base
    ref: str
    alts: tuple[str, ...] | None
    id: str | None = None

    @classmethod
    def from_record(cls, rec) -> Variant:
        """From a pysam VariantRecord (keeps only what consensus needs)."""
        return cls(rec.chrom, rec.start, rec.ref, tuple(rec.alts) if rec.alts else None, rec.id)


class Edit(NamedTuple):
    """What one haplotype applies at one record: REF (None: the current sequence there, see make_edit) -> ALT."""

    chrom: str
    start: int
    ref: str | None
    alt: str


MISSING = "missing"  # pick_allele: a missing call that -M turns into the missing character


def is_symbolic(alt: str) -> bool:
    """<DEL>, <INS>, <*>, <NON_REF>, the '*' overlap allele, breakends (e.g. 'G]chr2:10]') and '.'."""
    return alt.startswith("<") or alt in ("*", ".") or "[" in alt or "]" in alt


def variant_type(ref: str, alt: str) -> tuple[bool, int]:
    """(is_indel, n) as htslib's bcf_set_variant_type sets them for non-symbolic alleles (n: length change, SNV 1)."""
    if len(ref) == 1 and len(alt) == 1:
        return False, 0 if ref == alt or alt in ".X" else 1
    i = 0
    while i < len(ref) and i < len(alt) and ref[i].upper() == alt[i].upper():
        i += 1
    if i == len(ref) and i < len(alt):
        return True, len(alt) - len(ref)  # insertion
    if i < len(ref) and i == len(alt):
        return True, len(alt) - len(ref)  # deletion
    if i == len(ref) == len(alt):
        return False, 0  # REF == ALT
    re, ae = len(ref) - 1, len(alt) - 1
    while re > i and ae > i and ref[re].upper() == alt[ae].upper():
        re, ae = re - 1, ae - 1
    if ae == i:
        if re == i:
            return False, 1  # SNV with shared flanks
        return ref[re].upper() == alt[ae].upper(), -(re - i)  # deletion, or 'other'
    if re == i:
        return ref[re].upper() == alt[ae].upper(), ae - i  # insertion, or 'other'
    return False, (-(re - i + 1) if re - i > ae - i else ae - i + 1)  # MNP / other


def _is_ref_type(ref: str, alt: str) -> bool:
    """htslib's VCF_REF type for an ALT: '.', REF itself, <*>, <X>, <NON_REF>."""
    if alt in ("<*>", "<X>", "<NON_REF>"):
        return True
    if len(ref) == 1 and len(alt) == 1:
        return alt in ".X" or alt == ref
    return not is_symbolic(alt) and alt.upper() == ref.upper()


def iupac_allele(v: Variant, present: set[int]) -> int | str:
    """`-H ..Iu` on an unphased GT: the IUPAC merge of the present alleles over the longest present ALT (a string),
    else the first present ALT index (a symbolic one), else 0 (REF only)."""
    alleles = (v.ref, *(v.alts or ()))
    fallback, best, bits = -1, -1, []
    for i in sorted(present):
        if fallback <= 0:
            fallback = i
        a = alleles[i]
        if any(c.upper() not in BITS for c in a):
            continue  # symbolic or not a nucleotide code
        bits += [0] * (len(a) - len(bits))
        if i > 0 and (best < 0 or len(a) > len(alleles[best])):
            best = i
        for j, c in enumerate(a):
            bits[j] |= BITS[c.upper()]
    if best > 0:
        return "".join(IUPAC[b] for b in bits[: len(alleles[best])])
    return max(fallback, 0)


def pick_allele(
    v: Variant,
    slots: Sequence[int | None],  # the record's GT slots for one sample: allele, None ('.') or END
    unphased_gt: bool,  # the GT counts as unphased: 2+ alleles, not all '|', no END slot (see module docstring)
    hap: int,  # 1 or 2
    *,
    unphased: str = "gt_order",  # "gt_order" (-H 1/2) or "iupac" (-H 1pIu/2pIu)
    missing: str = "ref",  # "ref" or a character (-M C)
) -> int | str | None:
    """The allele `bcftools consensus -H` applies for this haplotype (see module docstring): None (nothing), 0 (REF),
    k (ALT k), an IUPAC-merged ALT string, or MISSING (apply the missing character)."""
    n = len(slots)
    if n == 0:
        return None
    if unphased == "iupac" and unphased_gt:
        present = {a for a in slots if a is not None and a != END}
        if present:
            return iupac_allele(v, present)
        return MISSING if missing != "ref" else None
    if hap > n:
        if slots[0] is None or slots[-1] is None:
            return MISSING if missing != "ref" else None
        return None  # bcftools: "Can't apply 2-th haplotype"
    a = slots[hap - 1]
    if a is None or a == END:
        return MISSING if missing != "ref" else None
    return a


def make_edit(v: Variant, allele: int | str | None, missing: str = "N") -> Edit | None:
    """The edit for a picked allele; None when nothing is applied (REF, skipped, or a record without ALT)."""
    if allele is None or (isinstance(allele, int) and allele == 0):
        return None
    alts = v.alts or ()
    if allele == MISSING:
        if len(v.ref) > 1 and all(_is_ref_type(v.ref, a) for a in alts):  # e.g. a gVCF block: every base
            return Edit(v.chrom, v.start, None, missing * len(v.ref))
        return Edit(v.chrom, v.start, v.ref[0], missing)
    if isinstance(allele, str):
        return Edit(v.chrom, v.start, v.ref, allele)
    if allele > len(alts):
        raise GenomicsInputError(
            f"{v.chrom}:{v.start + 1}: genotype allele {allele} but the record has {len(alts)} ALT(s); "
            "the VCF record is malformed (`bcftools norm -c e` reports such records)"
        )
    return Edit(v.chrom, v.start, v.ref, alts[allele - 1])


def apply_variants(ref_seq: str, region_start: int, records: Sequence, alleles: Sequence, *, counts=None) -> str:
    """apply_edits from records (Variant / pysam records) and one ALT index per record (0 = REF, None = missing)."""
    if len(records) != len(alleles):
        raise ValueError(f"{len(records)} records but {len(alleles)} alleles; give one allele index per record")
    counts = counts if counts is not None else Counter()
    edits = []
    for rec, a in zip(records, alleles):
        if a is None or a < 0:
            counts["missing"] += 1
        elif a == 0:
            counts["ref"] += 1
        else:
            edits.append(make_edit(Variant(rec.chrom, rec.start, rec.ref, tuple(rec.alts or ())), a))
    return apply_edits(ref_seq, region_start, edits, counts=counts)


def _case_like(allele: str, base: str) -> str:
    return allele.upper() if base.upper() == base else allele.lower()


def apply_edits(
    ref_seq: str, region_start: int, edits: Sequence[Edit | None], *, counts=None, origin: list | None = None
) -> str:
    """The haplotype of region [region_start, region_start + len(ref_seq)) with the edits applied in order.

    `origin`, when given (a list, filled in place), gets one entry per base of the haplotype: the offset in ref_seq
    of the reference base it stands on, or -1 for an inserted base (the coordinate map; see reference_to_haplotype)."""
    counts = counts if counts is not None else Counter()
    buf = list(ref_seq)
    src = list(range(len(ref_seq))) if origin is not None else None  # parallel to buf: reference offset or -1
    mod_off = 0  # length change so far: index in buf = pos - region_start + mod_off
    frz_pos = -1  # last REF base (0-based, reference coordinates) of the last applied edit
    prev_is_insert, prev_base, prev_base_pos = False, "", -1
    for e in edits:
        if e is None:
            continue
        pos, alt, where = e.start, e.alt, f"{e.chrom}:{e.start + 1}"
        if is_symbolic(alt):
            counts["symbolic"] += 1
            continue
        idx = pos - region_start + mod_off
        ref = e.ref
        if ref is None:  # -M on an ALT-less multi-base record: REF is whatever the sequence holds there
            ref = "\0" * max(0, -idx) + "".join(buf[max(idx, 0) : idx + len(alt)])
        rlen = len(ref)
        is_indel, var_len = variant_type(ref, alt)
        trim_beg = 1 if is_indel and ref[0] == alt[0] else 0
        if pos <= frz_pos and (pos < frz_pos or not trim_beg or var_len == 0 or prev_is_insert):
            counts["overlap"] += 1
            warnings.warn(
                f"{where} {ref}>{alt} overlaps a variant already applied on this haplotype; skipped "
                "(as bcftools consensus does)",
                ConsensusWarning,
                stacklevel=2,
            )
            continue
        if idx < 0:  # starts before the region: trim to it
            k = -idx
            if rlen < k:  # REF ends before the region (-M rewrote a longer record to its first base)
                continue
            counts["trimmed"] += 1
            if len(alt) > k:
                pos, rlen, ref, alt, idx = pos + k, rlen - k, ref[k:], alt[k:], 0
            else:  # keep one base before the region as the anchor of a deletion
                pos, rlen, ref, alt, idx = pos + k - 1, rlen - k + 1, ref[k - 1 :], alt[-1], -1
        if rlen > len(buf) - idx:  # reaches past the region end: cut
            counts["trimmed"] += 1
            rlen = len(buf) - idx
            alt = alt[:rlen]
        if idx > 0 and idx >= len(buf):
            continue  # nothing of it is left inside the region
        if idx >= 0:
            current = "".join(buf[idx : idx + rlen])
            if current.upper() != ref[:rlen].upper():
                ok = prev_base_pos == pos and ref[0].upper() == prev_base.upper()
                ok = ok and (rlen == 1 or current[1:].upper() == ref[1:rlen].upper())
                if not ok:
                    raise ReferenceMismatch(
                        f"{where}: VCF REF {e.ref!r} (ALT {e.alt!r}) does not match the reference sequence "
                        f"{current!r}; the VCF and the FASTA are probably from different genome builds"
                    )
        alt = _case_like(alt, buf[max(idx, 0)] if buf else "A")
        alen = len(alt)
        len_diff = alen - rlen
        if len_diff <= 0:  # substitution or deletion
            last = idx + rlen - 1
            prev_base, prev_base_pos, prev_is_insert = buf[last] if 0 <= last < len(buf) else "", pos + rlen - 1, False
            for i in range(max(trim_beg, -idx), alen):
                buf[idx + i] = alt[i]
            if len_diff:
                del buf[idx + alen : idx + rlen]
                if src is not None:
                    del src[idx + alen : idx + rlen]
        else:  # insertion: keep an anchor base that an earlier edit at this position changed
            prev_is_insert, prev_base_pos = True, pos
            buf[idx + rlen : idx + rlen] = [""] * len_diff
            if src is not None:
                src[idx + rlen : idx + rlen] = [-1] * len_diff
            ibeg = 0
            while ibeg < alen and ibeg < rlen and ref[ibeg] == alt[ibeg] and pos + ibeg <= prev_base_pos:
                ibeg += 1
            buf[idx + ibeg : idx + alen] = list(alt[ibeg:])
        mod_off += len_diff
        frz_pos = pos + rlen - 1
        counts["applied"] += 1
    if src is not None:
        origin[:] = src
    return "".join(buf)


def reference_to_haplotype(origin: Sequence[int], ref_len: int) -> np.ndarray:
    """(ref_len,) int64: the haplotype offset of each reference base, from apply_edits' `origin`. A deleted base maps
    to the last kept base before it (a deletion's anchor), or to 0 when none is kept before it."""
    where = np.full(ref_len, -1, dtype=np.int64)
    o = np.asarray(origin, dtype=np.int64)
    kept = np.flatnonzero(o >= 0)
    where[o[kept]] = kept
    return np.maximum(np.maximum.accumulate(where), 0) if ref_len else where
