"""Checks of a cohort's genotype file (data.genotypes, when it is not data.vcf itself) for fusion.cohort.

    source = open_source(path, problems)                          # genomics.genotypes.GenotypeSource or CohortFatal
    check_sites(source, fasta, fasta_path, lengths, regions, problems, max_sites)
    subjects = pair_samples(subjects, source, report)             # manifest subjects without genotypes excluded

The file may be a VCF/BCF, a PLINK 2 .pgen or a PLINK 1 .bed (genomics.genotypes tells which from its siblings).
Checked: the samples (IIDs of the .psam / .fam) are unique and pair with the manifest's subject_id (a subject without
genotypes is excluded, a sample without a manifest row is a warning naming the sample file), the contigs match the
reference FASTA, some variant lies inside the regions, and the REF alleles equal the FASTA (the first `max_sites`
variants inside the regions, every one with None), each mismatch naming the variant file and line (PLINK) or site.
A PLINK 1 .bim is read with A2 (column 6) as REF: a mismatching site whose A1 equals the FASTA is reported as swapped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fusion.cohort_checks import CohortFatal, Problem, check_vcf_contigs
from fusion.genome_checks import RegionSequences, compare_refs, report_ref_mismatches
from genomics.errors import GenomicsInputError
from genomics.genotypes import GenotypeSource, open_genotypes
from genomics.regions import Region

SWAP_HINT = {
    "bed": "a PLINK 1 .bim must carry the ALT as A1 (column 5) and the REF as A2 (column 6), as `plink2 --make-bed` "
    "writes from a VCF; PLINK 1.9 puts the minor allele there unless run with --keep-allele-order; fix it with "
    "`plink2 --bfile PREFIX --fa REF.fa --ref-from-fa force --make-bed --out NEW`",
    "pgen": "set REF from the FASTA with `plink2 --pfile PREFIX --fa REF.fa --ref-from-fa force --make-pgen --out NEW`",
}


def open_source(path: Path, problems: list[Problem]) -> GenotypeSource:
    """The open genotype source; duplicate sample ids reported. CohortFatal when the file cannot be read."""
    try:
        source = open_genotypes(path)
    except GenomicsInputError as err:  # its message starts with the file (and line)
        raise CohortFatal(str(err)) from err
    samples = source.samples
    if not samples:
        source.close()
        raise CohortFatal(f"{source.samples_file}: no samples; it must list one sample per subject")
    counts = pd.Series(samples).value_counts()
    dup = sorted(counts.index[counts > 1])
    if dup:
        problems.append(
            Problem("error", str(source.samples_file), f"duplicate sample ids {dup[:5]}; sample ids must be unique")
        )
    return source


def check_sites(
    source: GenotypeSource, fasta, fasta_path: Path, lengths: dict[str, int], regions: list[Region], problems: list,
    max_sites: int | None,
) -> None:  # fmt: skip
    """Contigs vs the FASTA, variants inside the regions, and REF alleles vs the FASTA (module docstring)."""
    check_vcf_contigs(source.variants_file, source.contigs, lengths, problems)
    vfile = source.variants_file
    try:
        sites = [  # compare_refs' site tuples; where = the variant file's line (PLINK) or site (VCF)
            (i, regions[i], v.contig, v.start, v.pos, v.ref, v.alts, f"{vfile}:{v.line or f'{v.contig}:{v.pos}'}")
            for i, v in source.variants(regions, max_sites)
        ]
    except GenomicsInputError as err:
        raise CohortFatal(f"{source.path}: {err}") from err
    if not sites and regions:
        problems.append(
            Problem(
                "error",
                str(vfile),
                f"no variant lies inside the {len(regions)} region(s) of data.regions: the dosage baseline would have "
                "no feature (contig names or genome build differ?)",
            )
        )
        return
    mismatches, checked = compare_refs(sites, RegionSequences(fasta, lengths))
    report_ref_mismatches(vfile, mismatches, checked, fasta_path, problems, SWAP_HINT.get(source.format, ""))


def pair_samples(subjects: pd.DataFrame, source: GenotypeSource, report) -> pd.DataFrame:
    """`subjects` without those that are no sample of the source (each an error at its manifest line, listed in
    report.excluded); samples without a manifest row: one warning naming the sample file."""
    samples = set(source.samples)
    where = source.samples_file
    absent = ~subjects["subject_id"].isin(samples)
    for sid in subjects.loc[absent, "subject_id"]:
        line = report.lines.get(sid)
        report.problems.append(
            Problem(
                "error",
                f"{report.manifest}:{line}" if line else str(report.manifest),
                f"subject {sid!r}: not a sample of {where} (data.genotypes; no genotypes); add it or drop the row",
            )
        )
        previous = report.excluded.get(sid)
        report.excluded[sid] = f"{previous}; not in genotypes" if previous else "not in genotypes"
    extra = sorted(samples - set(subjects["subject_id"]) - set(report.excluded))
    if extra:
        report.problems.append(
            Problem(
                "warning",
                str(where),
                f"{len(extra)} sample(s) have no manifest row and are ignored, e.g. {extra[:3]}",
            )
        )
    return subjects[~absent].reset_index(drop=True)
