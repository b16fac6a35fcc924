"""Load and validate a cohort on disk (format: kb/cohort-format.md). Library code: no Lightning, no Hydra.

    cohort, report = load_cohort(manifest, vcf, reference, regions, atlas, atlas_coords, strict=False)
    print(report.summary())
    cohort.subjects   # DataFrame, one row per usable subject: subject_id, fmri (absolute path), split, covariates

Every problem is collected before anything is decided, so one run lists them all, each naming its file and line or
subject. Subjects are paired by id (manifest subject_id == VCF sample name), never by row order; a subject with a
problem of its own (duplicate id, bad split, fMRI missing / unreadable / not 4D, not in the VCF) is excluded and listed
with the reason. strict=True raises CohortError (carrying the report) when any error-level problem was found;
otherwise only fatal problems raise: a file missing or unreadable as a whole, required manifest columns missing, or no
usable subject left. Without a `split` column, subjects are split by a hash of their id (stable under reordering and
under adding subjects) with `split_fractions`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brain.preprocess import AtlasCoords
from fusion import cohort_checks as checks
from fusion.cohort_checks import CohortFatal, Problem
from genomics.regions import Region

SPLITS = ("train", "val", "test")
REQUIRED = ("subject_id", "fmri")
SCAN_COLUMNS = ("n_volumes", "t_r")  # read from each scan's header, once, by the cohort check
MAX_LISTED = 50  # problems / excluded subjects printed by summary() (the report keeps all)


class CohortError(ValueError):
    """A cohort that cannot be used as given; `report` holds every problem found (None for a fatal file problem)."""

    def __init__(self, message: str, report: CohortReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class CohortReport:
    manifest: Path
    n_manifest: int = 0  # data rows in the manifest
    problems: list[Problem] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # subject id (or "line N") -> reason(s)
    vcf_only: list[str] = field(default_factory=list)  # VCF samples without a manifest row (ignored)
    split_counts: dict[str, int] = field(default_factory=dict)
    split_source: str = "manifest"  # "manifest" or "hash of subject_id"
    n_regions: int = 0
    n_parcels: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        n_kept = sum(self.split_counts.values())
        splits = ", ".join(f"{s} {self.split_counts.get(s, 0)}" for s in SPLITS)
        lines = [
            f"cohort {self.manifest}: {n_kept} of {self.n_manifest} manifest subjects usable ({splits}; split from "
            f"{self.split_source}); {self.n_regions} regions, {self.n_parcels} parcels",
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)" + (":" if self.problems else ""),
        ]
        lines += [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more (report.problems lists all)")
        if self.excluded:
            lines.append(f"excluded subjects ({len(self.excluded)}):")
            lines += [f"  {sid}: {why}" for sid, why in list(self.excluded.items())[:MAX_LISTED]]
            if len(self.excluded) > MAX_LISTED:
                lines.append(f"  ... and {len(self.excluded) - MAX_LISTED} more (report.excluded lists all)")
        if self.vcf_only:
            lines.append(f"{len(self.vcf_only)} VCF sample(s) have no manifest row and are ignored")
        return "\n".join(lines)


@dataclass
class Cohort:
    """A loaded, checked cohort. Every file is parsed once, here; transforms, datamodule and model take what they need
    from this object (fusion.app.build), never from the files again."""

    files: dict[str, Path]  # manifest, vcf, reference, regions, atlas[, atlas_coords]: the files as given
    subjects: pd.DataFrame  # usable subjects: subject_id, fmri (absolute), split, n_volumes, t_r, then covariates
    regions: list[Region]  # usable BED regions after exclusion, file order (the R axis)
    contig_lengths: dict[str, int]  # reference FASTA contig -> length
    atlas: object  # the label image (nibabel Nifti1Image held in memory)
    labels: np.ndarray  # sorted atlas labels (the P axis)
    coords: AtlasCoords | None = None  # parcel coordinates sorted by label (None without atlas_coords)
    covariates: dict[str, str] = field(default_factory=dict)  # manifest covariate -> "continuous" | "categorical"

    @property
    def n_regions(self) -> int:
        return len(self.regions)

    @property
    def n_parcels(self) -> int:
        return len(self.labels)

    @property
    def manifest(self) -> Path:
        return self.files["manifest"]

    @property
    def vcf(self) -> Path:
        return self.files["vcf"]

    @property
    def reference(self) -> Path:
        return self.files["reference"]

    def inputs(self, modality: str) -> dict[str, object]:
        """What a modality's transforms and encoders may ask for by constructor parameter name (fusion/encoders.py)."""
        if modality == "genomics":
            train = self.subjects.loc[self.subjects["split"] == "train", "subject_id"].tolist()
            return {
                "reference": self.reference, "vcf": self.vcf, "regions": self.regions, "n_regions": self.n_regions,
                "train_subjects": train,
            }  # fmt: skip
        if modality == "brain":
            return {
                "atlas": self.atlas, "labels": self.labels, "atlas_coords": self.coords, "coords": self.coords,
                "n_parcels": self.n_parcels,
            }  # fmt: skip
        raise ValueError(f"modality must be 'genomics' or 'brain', got {modality!r}")


def exclude_short_scans(cohort: Cohort, report: CohortReport, window: int | None, strict: bool = False) -> None:
    """Subjects whose scan has fewer volumes than the brain encoder's `window` are excluded and reported (in place)."""
    if not window:
        return
    subjects = cohort.subjects
    short = subjects["n_volumes"] < window
    for sid, path, n in subjects.loc[short, ["subject_id", "fmri", "n_volumes"]].itertuples(index=False):
        report.excluded[sid] = f"{path}: {n} volumes, fewer than the brain encoder's window of {window}"
    if short.any():
        if strict:
            raise CohortError(report.summary(), report)
        cohort.subjects = subjects[~short].reset_index(drop=True)
        report.split_counts = {s: int((cohort.subjects["split"] == s).sum()) for s in SPLITS}
    if cohort.subjects.empty:
        raise CohortError(f"no usable subject in the cohort:\n{report.summary()}", report)


def hash_split(subject_id: str, fractions=(0.7, 0.15, 0.15)) -> str:
    """Deterministic split of one id: sha256(id) as a number in [0, 1) against the cumulative fractions."""
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test), got {fractions}")
    u = int.from_bytes(hashlib.sha256(subject_id.encode()).digest()[:8], "big") / 2**64
    return SPLITS[int(np.searchsorted(np.cumsum(f / f.sum())[:2], u, side="right"))]


def load_cohort(
    manifest: str | Path,
    vcf: str | Path,
    reference: str | Path,
    regions: str | Path,
    atlas: str | Path,
    atlas_coords: str | Path | None = None,
    *,
    strict: bool = False,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> tuple[Cohort, CohortReport]:
    files = {"manifest": manifest, "vcf": vcf, "reference": reference, "regions": regions, "atlas": atlas}
    if atlas_coords is not None:
        files["atlas_coords"] = atlas_coords
    files = {k: Path(v).expanduser() for k, v in files.items()}
    missing = [f"{k}: {p}" for k, p in files.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError("cohort file(s) not found:\n  " + "\n  ".join(missing))
    report = CohortReport(files["manifest"])
    problems = report.problems
    try:
        table = checks.read_table(files["manifest"], "manifest")
        absent = [c for c in REQUIRED if c not in table.columns]
        if absent:
            raise CohortFatal(
                f"{files['manifest']}: missing column(s) {absent}; the manifest needs subject_id and fmri "
                f"(and optionally split and covariates), got {list(table.columns)}"
            )
        samples, vcf_contigs, vf = checks.check_vcf(files["vcf"], problems)
        lengths, fasta = checks.check_reference(files["reference"])
        regions = checks.check_regions(files["regions"], lengths, vcf_contigs, files["vcf"], problems)
        checks.check_vcf_against_reference(files["vcf"], vf, vcf_contigs, fasta, lengths, regions, problems)
        vf.close()
        fasta.close()
        atlas_img, labels = checks.check_atlas(files["atlas"], problems)
        coords = None
        if "atlas_coords" in files:
            coords = checks.check_coords(files["atlas_coords"], files["atlas"], labels, problems)
    except CohortFatal as err:
        raise CohortError(str(err)) from err
    subjects = _check_subjects(table, files["manifest"], set(samples), split_fractions, report)
    report.vcf_only = sorted(set(samples) - set(table["subject_id"].dropna().str.strip()))
    if report.vcf_only:
        problems.append(
            Problem(
                "warning",
                str(files["vcf"]),
                f"{len(report.vcf_only)} sample(s) have no manifest row and are ignored, e.g. {report.vcf_only[:3]}",
            )
        )
    report.split_counts = {s: int((subjects["split"] == s).sum()) for s in SPLITS}
    report.n_regions, report.n_parcels = len(regions), len(labels)
    if strict and report.errors:
        raise CohortError(f"cohort has {len(report.errors)} error(s) (strict=True):\n{report.summary()}", report)
    if subjects.empty:
        raise CohortError(f"no usable subject in the cohort:\n{report.summary()}", report)
    covariates = {
        c: "continuous" if pd.api.types.is_numeric_dtype(subjects[c]) else "categorical"
        for c in subjects.columns
        if c not in (*REQUIRED, "split", *SCAN_COLUMNS)
    }
    cohort = Cohort(files, subjects, regions, lengths, atlas_img, labels, coords, covariates)
    return cohort, report


def _check_subjects(table, manifest: Path, samples: set[str], split_fractions, report: CohortReport) -> pd.DataFrame:
    """Manifest rows -> usable subjects; every per-subject problem reported and the subject excluded."""
    import nibabel as nib

    table = table.dropna(how="all")  # blank lines (line numbers stay right: index = line - 2)
    report.n_manifest = len(table)
    reasons: dict[int, list[str]] = {}  # row index -> reasons
    scans: dict[int, tuple[int, float]] = {}  # row index -> (volumes, repetition time in s) from the header

    def bad(i: int, sid, message: str, short: str) -> None:
        who = f"subject {sid!r}: " if isinstance(sid, str) else ""
        report.problems.append(Problem("error", f"{manifest}:{i + 2}", who + message))
        reasons.setdefault(i, []).append(short)

    ids = table["subject_id"].str.strip()
    counts = Counter(ids.dropna())
    has_split = "split" in table.columns
    report.split_source = "manifest" if has_split else "hash of subject_id"
    splits = table["split"].str.strip().str.lower() if has_split else None
    for i, sid in ids.items():
        if not isinstance(sid, str):
            bad(i, None, "empty subject_id", "empty subject_id")
            continue
        if counts[sid] > 1:
            lines = [j + 2 for j in ids.index[ids == sid]]
            bad(i, sid, f"duplicate subject_id (lines {lines}); ids must be unique", "duplicate id")
        if has_split:
            value = splits[i]
            if not isinstance(value, str):
                bad(i, sid, f"split is empty; use one of {SPLITS} (or drop the column)", "no split")
            elif value not in SPLITS:
                bad(i, sid, f"unknown split {table['split'][i]!r}; use one of {SPLITS}", "unknown split")
        if sid not in samples:
            bad(i, sid, "not a sample of the VCF (no genotypes)", "not in VCF")
        fmri = table["fmri"][i]
        if not isinstance(fmri, str):
            bad(i, sid, "empty fmri path", "no fMRI path")
            continue
        path = Path(fmri.strip()).expanduser()
        path = path if path.is_absolute() else (manifest.parent / path)
        table.loc[i, "fmri"] = str(path.absolute())
        if not path.is_file():
            bad(i, sid, f"fMRI file not found: {path}", "fMRI missing")
            continue
        try:
            header = nib.load(str(path)).header  # header only
        except Exception as err:  # nibabel raises several types
            bad(i, sid, f"fMRI file is not a readable NIfTI ({err}): {path}", "fMRI unreadable")
            continue
        shape = header.get_data_shape()
        if len(shape) != 4 or shape[3] < 2:
            bad(i, sid, f"fMRI must be a 4D image with >= 2 volumes, got shape {shape}: {path}", "fMRI not 4D")
            continue
        scans[i] = (int(shape[3]), float(header.get_zooms()[3]))
    for i, why in reasons.items():
        key = ids[i] if isinstance(ids[i], str) else f"line {i + 2}"
        previous = report.excluded[key].split("; ") if key in report.excluded else []
        report.excluded[key] = "; ".join(dict.fromkeys(previous + why))
    keep = table.drop(index=list(reasons)).copy()
    keep["subject_id"] = keep["subject_id"].str.strip()
    keep["n_volumes"] = [scans[i][0] for i in keep.index]
    keep["t_r"] = [scans[i][1] for i in keep.index]
    if has_split:
        keep["split"] = keep["split"].str.strip().str.lower()
    else:
        keep["split"] = [hash_split(s, split_fractions) for s in keep["subject_id"]]
    for col in keep.columns:
        if col not in (*REQUIRED, "split", *SCAN_COLUMNS):
            try:
                keep[col] = pd.to_numeric(keep[col])
            except (ValueError, TypeError):
                pass  # a text covariate (sex, site, ...)
    fixed = (*REQUIRED, "split", *SCAN_COLUMNS)
    columns = [*fixed, *[c for c in keep.columns if c not in fixed]]
    return keep[columns].reset_index(drop=True)
