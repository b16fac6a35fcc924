"""VEP embeddings from the command line: `key=value` arguments over genomics.variant_embedding.embed_variants.

    python -m genomics.vep vcf=VARIANTS.vcf.gz reference=REF.fa checkpoint=DIR out=DIR [window=1536] [seq_len=4096]
        [cache=DIR] [chunk_size=8] [block=256] [device=cpu] [ssm_backend=auto] [progress=true]

Writes DIR/vep.parquet and DIR/provenance.json (see genomics.variant_embedding). Bad arguments: a message and the
usage on stderr, exit status 2; input data the reference cannot serve (e.g. a REF mismatch): a message, exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = (
    "usage: python -m genomics.vep vcf=VARIANTS.vcf.gz reference=REF.fa checkpoint=DIR out=DIR [window=1536]\n"
    "       [seq_len=4096] [cache=DIR (default OUT/embedding_cache)] [chunk_size=8] [block=256] [device=cpu]\n"
    "       [ssm_backend=auto|torch|cpu|cuda|triton] [progress=true|false]"
)
REQUIRED = ("vcf", "reference", "checkpoint", "out")
INTS = {"window": 1536, "seq_len": 4096, "chunk_size": 8, "block": 256}
OPTIONAL = {"cache": None, "device": "cpu", "ssm_backend": "auto", "progress": "true"}
BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class UsageError(ValueError):
    """A command-line argument that is missing, unknown or malformed."""


def parse_args(argv: list[str]) -> dict:
    """key=value arguments -> embed_variants kwargs; raises UsageError naming the offending argument."""
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")  # tolerate --key=value
        if not sep or not key:
            raise UsageError(f"arguments are key=value, got {arg!r}")
        if key not in (*REQUIRED, *INTS, *OPTIONAL):
            raise UsageError(f"unknown argument {key!r} (known: {', '.join([*REQUIRED, *INTS, *OPTIONAL])})")
        if key in given:
            raise UsageError(f"{key} given twice")
        given[key] = value
    missing = [k for k in REQUIRED if not given.get(k)]
    if missing:
        raise UsageError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    kw: dict = {k: given[k] for k in REQUIRED}
    for key, default in INTS.items():
        try:
            kw[key] = int(given.get(key, default))
        except ValueError:
            raise UsageError(f"{key} must be a positive integer, got {given[key]!r}") from None
        if kw[key] < 1:
            raise UsageError(f"{key} must be a positive integer, got {kw[key]}")
    for name in ("vcf", "reference"):
        if not Path(kw[name]).is_file():
            raise UsageError(f"{name}={kw[name]}: no such file")
    if not (Path(kw["checkpoint"]) / "config.json").is_file():
        raise UsageError(f"checkpoint={kw['checkpoint']}: not a local model folder (no config.json)")
    if Path(kw["out"]).exists() and not Path(kw["out"]).is_dir():
        raise UsageError(f"out={kw['out']}: exists and is not a folder")
    kw["cache"] = given.get("cache") or None
    kw["device"] = given.get("device", OPTIONAL["device"])
    if not (kw["device"] == "cpu" or kw["device"].split(":")[0] == "cuda"):
        raise UsageError(f"device must be cpu, cuda or cuda:N, got {kw['device']!r}")
    backend = given.get("ssm_backend", OPTIONAL["ssm_backend"])
    if backend not in ("auto", "torch", "cpu", "cuda", "triton"):
        raise UsageError(f"ssm_backend must be auto, torch, cpu, cuda or triton, got {backend!r}")
    kw["ssm_backend"] = None if backend == "auto" else backend
    progress = given.get("progress", OPTIONAL["progress"]).lower()
    if progress not in BOOLS:
        raise UsageError(f"progress must be true or false, got {progress!r}")
    kw["progress"] = BOOLS[progress]
    return kw


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        kwargs = parse_args(argv)
    except UsageError as err:
        print(f"error: {err}\n{USAGE}", file=sys.stderr)
        return 2
    from genomics.variant_embedding import VariantInputError, embed_variants

    try:
        record = embed_variants(**kwargs)
    except (VariantInputError, OSError) as err:  # data the inputs cannot serve; unreadable files
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = record["counts"]
    print(
        f"wrote {Path(kwargs['out']) / 'vep.parquet'}: {counts['rows']} ALT rows from {counts['sites']} sites "
        f"({counts['skipped_symbolic']} symbolic ALTs skipped); {counts['embedded']} windows embedded, "
        f"{counts['cached']} from the cache"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
