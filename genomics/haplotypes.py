"""Write every sample's personal haplotypes of a BED's regions as FASTA, one file per sample.

    python -m genomics.haplotypes reference=REF.fa vcf=COHORT.vcf.gz regions=REGIONS.bed out=DIR \\
        [samples=A,B] [unphased=gt_order|iupac] [missing=ref|N]

DIR/{sample}.fa holds, per region in BED order, '{region}|hap1' and '{region}|hap2' (region: the BED name column, else
chrom:start-end 1-based inclusive), 60 bases a line, each file written atomically. The sequences equal
`samtools faidx REF CHR:START-END | bcftools consensus -s SAMPLE -H 1` (-H 2; unphased=iupac: -H 1pIu / -H 2pIu;
missing=N: -M N); see genomics.personal. Bad arguments or unusable inputs: a message and exit status 2.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from genomics.contigs import ContigError
from genomics.personal import UNPHASED, PersonalHaplotypes
from genomics.regions import read_bed

REQUIRED = ("reference", "vcf", "regions", "out")
OPTIONAL = {"samples": None, "unphased": "gt_order", "missing": "ref"}
USAGE = (
    "usage: python -m genomics.haplotypes reference=REF.fa vcf=COHORT.vcf.gz regions=REGIONS.bed out=DIR "
    "[samples=A,B] [unphased=gt_order|iupac] [missing=ref|N]"
)


class UsageError(Exception):
    """Bad command-line arguments or inputs that cannot be used (exit status 2)."""


def parse_args(argv: list[str]) -> dict[str, str | None]:
    """key=value arguments -> dict with every key of REQUIRED and OPTIONAL; UsageError naming what is wrong."""
    args: dict[str, str | None] = dict(OPTIONAL)
    seen = set()
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"arguments are key=value, got {item!r}")
        if key not in REQUIRED and key not in OPTIONAL:
            raise UsageError(f"unknown argument {key!r}; known: {', '.join((*REQUIRED, *OPTIONAL))}")
        if key in seen:
            raise UsageError(f"argument {key!r} given twice")
        if not value and key != "samples":
            raise UsageError(f"argument {key!r} has an empty value")
        seen.add(key)
        args[key] = value
    missing = [k for k in REQUIRED if k not in seen]
    if missing:
        raise UsageError(f"missing argument(s): {', '.join(missing)}")
    if args["unphased"] not in UNPHASED:
        raise UsageError(f"unphased must be one of {', '.join(UNPHASED)}, got {args['unphased']!r}")
    if args["missing"] not in ("ref", "N"):
        raise UsageError(f"missing must be ref or N, got {args['missing']!r}")
    for key, what in (("reference", "reference FASTA"), ("vcf", "VCF"), ("regions", "regions BED")):
        if not Path(args[key]).is_file():
            raise UsageError(f"{key}={args[key]}: {what} not found")
    return args


def run(args: dict[str, str | None]) -> list[Path]:
    """Write DIR/{sample}.fa for the chosen samples (all VCF samples by default); the paths written."""
    try:
        regions = read_bed(args["regions"])
    except ValueError as err:
        raise UsageError(str(err)) from err
    samples = [s for s in (args["samples"] or "").split(",") if s] or None
    haps = PersonalHaplotypes(
        args["reference"],
        args["vcf"],
        regions,
        samples=samples,
        unphased=args["unphased"],
        missing=args["missing"],
        bed=args["regions"],
    )
    try:
        names = haps.samples
    except (ContigError, KeyError, OSError, ValueError) as err:
        raise UsageError(err.args[0] if isinstance(err, KeyError) and err.args else str(err)) from err
    out = Path(args["out"])
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={out} exists and is not a folder")
    bad = [s for s in names if not s or "/" in s or s in (".", "..")]
    if bad:
        raise UsageError(f"sample names {bad[:5]} cannot be file names")
    written = [haps.write_fasta(s, out / f"{s}.fa") for s in names]
    haps.close()
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("genomics.haplotypes")
    warnings.showwarning = lambda message, *_, **__: log.warning("%s", message)  # skipped variants: one line each
    try:
        args = parse_args(argv)
        written = run(args)
    except UsageError as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    except ValueError as err:  # the data disagree (e.g. VCF REF vs FASTA: different builds)
        print(f"error: {err}", file=sys.stderr)
        return 1
    log.info("wrote %d FASTA file(s) to %s", len(written), args["out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
