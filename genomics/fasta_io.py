"""FASTA writing: fixed-width lines, each file written atomically (a temp file in the same folder, then os.replace).

    write_fasta("out/sub-0001.fa", [("r1|hap1", "ACGT..."), ("r1|hap2", "ACGA...")])   # 60 bases a line
    lines = list(fasta_lines("r1|hap1", "ACGT"))                                        # ['>r1|hap1\n', 'ACGT\n']

Record names must be non-empty and on one line; the line width defaults to 60 (samtools / bcftools).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def fasta_lines(name: str, seq: str, width: int = 60) -> Iterable[str]:
    """'>name' then the sequence in lines of `width` (an empty sequence: the header only)."""
    yield f">{name}\n"
    for i in range(0, len(seq), width):
        yield seq[i : i + width] + "\n"


def write_fasta(path: str | Path, records: Iterable[tuple[str, str]], *, width: int = 60) -> Path:
    """Write (name, sequence) records to `path`; readers never see a half-written file (nor does a crash leave one)."""
    if width < 1:
        raise ValueError(f"line width must be positive, got {width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            for name, seq in records:
                if not name or "\n" in name or "\r" in name:
                    raise ValueError(f"FASTA record name {name!r} is empty or spans lines")
                fh.writelines(fasta_lines(name, seq, width))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
