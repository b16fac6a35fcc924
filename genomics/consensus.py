"""Apply one haplotype's alleles to a reference region: a port of `bcftools consensus` (1.2x) apply_variant.

    seq = apply_variants(ref_seq, region_start, records, alleles, counts=Counter())

`records` are VCF records in file order (pysam VariantRecords or `Variant`s: chrom, start (0-based), ref, alts, id);
`alleles[i]` is the allele index this haplotype carries at records[i] (0 = REF, k = k-th ALT, None = missing call).
Ported bcftools rules: the frozen position (last REF base of the last applied variant) makes a later variant starting
at or before it an overlap (skipped, with a warning), except an indel whose first base equals its REF anchor starting
exactly there after a non-insertion; REF must match the (modified) sequence, with bcftools' allowance for a variant
anchored on the last base of a preceding deletion; the written allele takes the case of the sequence at its first
base; an insertion does not overwrite anchor bases that an earlier variant at the same position changed.
Not bcftools, by design: records only partly inside [region_start, region_start + len(ref_seq)) and symbolic ALTs are
skipped and counted (counts["partial"], counts["symbolic"]). Other counts: applied, ref, missing, overlap.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple


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


def _case_like(allele: str, base: str) -> str:
    return allele.upper() if base.upper() == base else allele.lower()


def apply_variants(
    ref_seq: str,
    region_start: int,
    records: Sequence,
    alleles: Sequence[int | None],
    *,
    counts: Counter | None = None,
) -> str:
    """The haplotype sequence of region [region_start, region_start + len(ref_seq)) (see module docstring)."""
    if len(records) != len(alleles):
        raise ValueError(f"{len(records)} records but {len(alleles)} alleles; give one allele index per record")
    counts = counts if counts is not None else Counter()
    buf = bytearray(ref_seq.encode("ascii"))
    region_end = region_start + len(ref_seq)
    mod_off = 0  # length change so far: index in buf = pos - region_start + mod_off
    frz_pos = -1  # last REF base (0-based, reference coordinates) of the last applied variant
    prev_is_insert, prev_base, prev_base_pos = False, "", -1
    for rec, allele in zip(records, alleles):
        if allele is None or allele < 0:
            counts["missing"] += 1
            continue
        if allele == 0:
            counts["ref"] += 1
            continue
        alts = tuple(rec.alts or ())
        where = f"{rec.chrom}:{rec.start + 1}"
        if allele > len(alts):
            raise ValueError(f"{where}: genotype allele {allele} but the record has {len(alts)} ALT allele(s)")
        ref, alt, pos = rec.ref, alts[allele - 1], rec.start
        if is_symbolic(alt):
            counts["symbolic"] += 1
            continue
        rlen = len(ref)
        if pos < region_start or pos + rlen > region_end:
            counts["partial"] += 1
            continue
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
        idx = pos - region_start + mod_off
        current = buf[idx : idx + rlen].decode()
        if current.upper() != ref.upper():
            ok = prev_base_pos == pos and ref[0].upper() == prev_base.upper()
            ok = ok and (rlen == 1 or current[1:].upper() == ref[1:].upper())
            if not ok:
                raise ValueError(
                    f"{where}: VCF REF {ref!r} does not match the reference sequence {current!r}; "
                    "the VCF and the FASTA are probably from different genome builds"
                )
        alt = _case_like(alt, chr(buf[idx]))
        len_diff = len(alt) - rlen
        if len_diff <= 0:  # substitution or deletion
            prev_base, prev_base_pos, prev_is_insert = chr(buf[idx + rlen - 1]), pos + rlen - 1, False
            buf[idx + trim_beg : idx + len(alt)] = alt[trim_beg:].encode()
            if len_diff:
                del buf[idx + len(alt) : idx + rlen]
        else:  # insertion: keep anchor bases an earlier variant at this position changed
            prev_is_insert, prev_base_pos = True, pos
            buf[idx + rlen : idx + rlen] = b"\0" * len_diff
            ibeg = 0
            while ibeg < min(rlen, len(alt)) and ref[ibeg] == alt[ibeg] and pos + ibeg <= prev_base_pos:
                ibeg += 1
            buf[idx + ibeg : idx + len(alt)] = alt[ibeg:].encode()
        mod_off += len_diff
        frz_pos = pos + rlen - 1
        counts["applied"] += 1
    return buf.decode("ascii")
