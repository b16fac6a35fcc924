"""Checks of a cohort's shared files (VCF, reference FASTA, regions BED, atlas, coordinates table) for fusion.cohort.

Each check appends Problems (file/line named, with what to do) and returns what later checks need. A file that cannot
be opened at all raises CohortFatal: nothing downstream could be checked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from brain.preprocess import AtlasCoords
from genomics.contigs import ContigError, match_contig
from genomics.genotypes import PLINK1_MAGIC
from genomics.regions import Region, check_contigs, parse_bed

log = logging.getLogger(__name__)


@dataclass
class Problem:
    severity: str  # "error": makes data wrong or excludes subjects (strict mode raises); "warning": worth knowing
    where: str  # file[:line] or "subject X"
    message: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.where}: {self.message}"


class CohortFatal(Exception):
    """A file that cannot be used at all (message says which and why)."""


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A CSV or TSV (sniffed by extension, optionally .gz), every cell a string; '' and NA spellings -> NaN."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        sep = ","
    elif name.endswith((".tsv", ".tab", ".txt")):
        sep = "\t"
    else:
        raise CohortFatal(f"{path}: the {what} must be a .csv or .tsv file (the extension picks the separator)")
    try:
        table = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, na_values=["", "NA", "NaN", "nan", "N/A"],
            skip_blank_lines=False,
        )  # fmt: skip
    except Exception as err:  # pandas raises several types for malformed tables
        raise CohortFatal(f"{path}: cannot read the {what} as {'CSV' if sep == ',' else 'TSV'} ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    twice = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if twice:
        raise CohortFatal(f"{path}: column(s) {twice} appear twice in the {what}'s header; names must be unique")
    return table


def check_vcf(path: Path, problems: list[Problem]) -> tuple[list[str], set[str], object]:
    """(samples, contigs named in the header or index, open VariantFile)."""
    import pysam

    try:
        vf = pysam.VariantFile(str(path))
    except (OSError, ValueError) as err:
        raise CohortFatal(f"{path}: not a readable VCF/BCF ({err})") from err
    samples = list(vf.header.samples)
    if not samples:
        raise CohortFatal(f"{path}: the VCF has no samples (genotype columns); it must hold one column per subject")
    if len(set(samples)) != len(samples):
        dup = sorted({s for s in samples if samples.count(s) > 1})
        problems.append(Problem("error", str(path), f"duplicate sample names {dup[:5]}; sample names must be unique"))
    contigs = set(vf.header.contigs)
    if vf.index is not None:
        contigs |= set(vf.index)
    else:
        problems.append(
            Problem("warning", str(path), "no index: every read scans the whole file; bgzip it and run `tabix -p vcf`")
        )
    return samples, contigs, vf


def check_reference(path: Path, cache_dir: Path | None = None) -> tuple[dict[str, int], object, Path]:
    """(contig lengths, open FastaFile, the path it was opened from). A FASTA without its index (.fai, and .gzi when
    bgzipped) is never indexed beside itself: with `cache_dir`, a link to it is indexed in <cache_dir>/fasta_index/
    and opened from there (the cohort's folders are never written); without, pysam builds the index where it can."""
    import pysam

    opened = path
    if cache_dir is not None and not _indexed(path):
        opened = index_in_cache(path, Path(cache_dir))
    try:
        fasta = pysam.FastaFile(str(opened))
    except (OSError, ValueError) as err:
        raise CohortFatal(
            f"{path}: cannot open the reference FASTA ({err}); it needs a .fai index (`samtools faidx {path.name}`)"
            " and, if compressed, bgzip compression with a .gzi"
        ) from err
    return dict(zip(fasta.references, fasta.lengths)), fasta, opened


def _indexed(path: Path) -> bool:
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    fai, gzi = Path(f"{path}.fai"), Path(f"{path}.gzi")
    fresh = fai.is_file() and fai.stat().st_mtime >= path.stat().st_mtime
    return fresh and (not gz or gzi.is_file())


def index_in_cache(path: Path, cache_dir: Path) -> Path:
    """A symlink to `path` in <cache_dir>/fasta_index/<key>/ with its .fai (and .gzi) built there, atomically (the
    folder is renamed into place when complete); key = the FASTA's absolute path, size and mtime."""
    import hashlib
    import os
    import tempfile

    import pysam

    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    final = cache_dir / "fasta_index" / key
    link = final / path.name
    if Path(f"{link}.fai").is_file():
        return link
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    try:
        os.symlink(path.resolve(), tmp / path.name)
        pysam.faidx(str(tmp / path.name))
        os.replace(tmp, final)
    except OSError:
        if not Path(f"{link}.fai").is_file():  # not another process winning the rename
            raise
    except (pysam.SamtoolsError, ValueError) as err:
        raise CohortFatal(f"{path}: cannot index the reference FASTA ({err}); is it FASTA (plain or bgzip)?") from err
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return link


def check_regions(path: Path, lengths: dict[str, int], vcf_contigs: set[str], vcf: Path, problems) -> list[Region]:
    """Usable regions (bad lines and contigs absent from the FASTA under every spelling dropped, each reported).

    Contig spellings are harmonised ('1' <-> 'chr1', 'MT' <-> 'chrM'; genomics.contigs), as the haplotypes are.
    A PLINK 1 genotype .bed (binary, told by its magic bytes) is refused with that said, never parsed as regions."""
    with open(path, "rb") as fh:
        if fh.read(len(PLINK1_MAGIC)) == PLINK1_MAGIC:
            problems.append(
                Problem(
                    "error",
                    str(path),
                    "a PLINK 1 genotype .bed (binary), not a BED of regions: give it as data.genotypes (with its "
                    ".bim and .fam beside it) and a text BED (chrom, start, end, name) as data.regions",
                )
            )
            return []
    regions, bed_problems = parse_bed(path)
    problems += [Problem("error", p.split(": ", 1)[0], p.split(": ", 1)[1]) for p in bed_problems]
    contig_problems = check_contigs(regions, lengths, bed=str(path), source="the reference FASTA", aliases=True)
    problems += [Problem("error", p.split(": ", 1)[0], p.split(": ", 1)[1]) for p in contig_problems]
    good = []
    for r in regions:
        try:
            name = match_contig(r.contig, lengths)
        except ContigError:
            continue  # reported by check_contigs
        if name is not None and r.end <= lengths[name]:
            good.append(r)
    renamed = sorted({(r.contig, match_contig(r.contig, lengths)) for r in good} - {(r.contig, r.contig) for r in good})
    if renamed:
        log.info("%s: contig names harmonised with the reference FASTA: %s", path, renamed[:5])
    no_variants = sorted({r.contig for r in good if match_or_none(r.contig, vcf_contigs) is None})
    if no_variants and vcf_contigs:
        problems.append(
            Problem(
                "warning",
                str(path),
                f"contig(s) {no_variants[:5]} have no records in {vcf.name} under any spelling: those regions get "
                "the reference for every subject",
            )
        )
    return good


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, is `root` (resolved) or below it."""
    resolved = path.expanduser().resolve()
    return resolved == root or root in resolved.parents


def match_or_none(name: str, available) -> str | None:
    """genomics.contigs.match_contig, with an ambiguous name (reported elsewhere) read as no match."""
    try:
        return match_contig(name, available)
    except ContigError:
        return None


def check_vcf_contigs(vcf_path: Path, vcf_contigs: set[str], lengths: dict[str, int], problems) -> None:
    """VCF contigs the FASTA lacks under every spelling (harmonised): an error when none matches (wrong genome)."""
    absent = sorted(c for c in vcf_contigs if match_or_none(c, lengths) is None)
    if absent:
        hint = "no VCF contig matches the FASTA under any spelling" if len(absent) == len(vcf_contigs) else ""
        problems.append(
            Problem(
                "error" if hint else "warning",
                str(vcf_path),
                f"contigs {absent[:5]} are not in the reference FASTA" + (f" ({hint}: wrong genome?)" if hint else ""),
            )
        )


def check_atlas(path: Path, problems: list[Problem]) -> tuple[object, np.ndarray]:
    """(the label image held in memory, its sorted non-zero labels); labels empty when unusable (problems say why)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types
        raise CohortFatal(f"{path}: not a readable NIfTI image ({err})") from err
    shape = img.shape
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
        problems.append(Problem("error", str(path), f"atlas must be a 3D label image, got shape {shape}"))
        return img, np.array([], dtype=int)
    data = np.asarray(img.dataobj).reshape(shape[:3])
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all() or not np.equal(np.round(data), data).all():
            problems.append(
                Problem("error", str(path), "atlas values must be integer labels (0 = background); got non-integers")
            )
            return img, np.array([], dtype=int)
    labels = np.unique(data[data != 0]).astype(int)
    if (labels < 0).any():
        problems.append(Problem("error", str(path), f"negative labels {labels[labels < 0][:5].tolist()}"))
    if len(labels) == 0:
        problems.append(Problem("error", str(path), "atlas has no labelled voxels"))
    elif labels[0] != 1 or labels[-1] != len(labels):
        problems.append(
            Problem("warning", str(path), f"labels are not 1..P ({len(labels)} labels, max {labels[-1]}); fine, noted")
        )
    return type(img)(data, img.affine, img.header), labels  # in memory: the file is not read again


def check_coords(path: Path, atlas: Path, labels: np.ndarray, problems: list[Problem]) -> AtlasCoords | None:
    """The coordinates table (label, x, y, z numeric; a row per atlas label) sorted by label; None when unusable."""
    table = read_table(path, "atlas coordinates table")
    table.columns = [c.lower() for c in table.columns]
    missing = [c for c in ("label", "x", "y", "z") if c not in table.columns]
    if missing:
        problems.append(
            Problem("error", str(path), f"missing column(s) {missing}; need label, x, y, z (MNI mm), got {list(table)}")
        )
        return None
    ok = True
    for col in ("label", "x", "y", "z"):
        values = pd.to_numeric(table[col], errors="coerce")
        for i in np.flatnonzero(values.isna().to_numpy())[:5]:
            problems.append(Problem("error", f"{path}:{i + 2}", f"{col} must be a number, got {table[col].iloc[i]!r}"))
            ok = False
        table[col] = values
    if not ok:
        return None
    dup = table["label"][table["label"].duplicated()].astype(int).tolist()
    if dup:
        problems.append(Problem("error", str(path), f"labels listed twice: {dup[:10]}"))
    listed = set(table["label"].astype(int))
    extra, absent = sorted(listed - set(labels.tolist())), sorted(set(labels.tolist()) - listed)
    if len(labels) and extra:
        problems.append(Problem("error", str(path), f"labels {extra[:10]} are not in the atlas {atlas.name}"))
    if len(labels) and absent:
        problems.append(
            Problem("error", str(path), f"atlas labels {absent[:10]} have no coordinates (of {len(labels)})")
        )
    table = table.sort_values("label", kind="stable")
    names = [str(n) for n in table["name"]] if "name" in table.columns else None
    xyz = table[["x", "y", "z"]].to_numpy(np.float32)
    return AtlasCoords(table["label"].to_numpy().astype(int), xyz, names, str(path))
