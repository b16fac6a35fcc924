"""Load and validate a cohort on disk (format: kb/cohort-format.md). Library code: no Lightning, no Hydra.

    cohort, report = load_cohort(manifest, vcf, reference, regions, atlas, atlas_coords, strict=False)
    print(report.summary())
    cohort.subjects   # DataFrame, one row per usable subject: subject_id, fmri (absolute path), split, covariates

Every problem is collected before anything is decided, so one run lists them all, each naming its file and line or
subject. Subjects are paired by id (manifest subject_id == VCF sample name), never by row order; a subject with a
problem of its own (duplicate id, bad split, fMRI missing / unreadable / not 4D, not in the VCF) is excluded and listed
with the reason. strict=True raises CohortError (carrying the report) when any error-level problem was found;
otherwise only fatal problems raise, after every other file was still checked: a file missing (CohortFileError, also
a FileNotFoundError) or unreadable as a whole, required manifest columns missing, no usable subject left. `checks`
picks how deep (cheap for every run; full / deep for `python -m fusion.validate`; kb/validation.md). Without a
`split` column, subjects are split by a hash of their id (stable under reordering and adding subjects).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brain.preprocess import AtlasCoords
from brain.scans import Run, Scan, ScanIndex
from fusion import cohort_checks as checks_
from fusion import genotype_checks
from fusion.cohort_checks import CohortFatal, Problem
from fusion.errors import FusionInputError
from fusion.genome_checks import MAX_REF_CHECKS, check_genome
from fusion.scan_checks import FILE_COLUMNS, LEVELS, AtlasInfo, ScanChecks, check_runs
from fusion.splits import SPLITS
from genomics.regions import Region, parse_bed

REQUIRED = ("subject_id", "fmri")
SCAN_COLUMNS = ("n_volumes", "t_r")  # read from each scan's header, once, by the cohort check
MAX_LISTED = 50  # problems / excluded subjects printed by summary() (the report keeps all)


class CohortError(FusionInputError):
    """A cohort that cannot be used as given; `report` holds every problem found (None for a fatal file problem)."""

    def __init__(self, message: str, report: CohortReport | None = None):
        super().__init__(message)
        self.report = report


class CohortFileError(CohortError, FileNotFoundError):
    """Cohort files missing (the message lists them all, then every other problem found)."""


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
    lines: dict[str, int] = field(default_factory=dict)  # subject id -> its manifest line (for later problems)
    censored: dict[str, tuple[int, int]] = field(default_factory=dict)  # subject -> (volumes lost, of total)
    censoring: str = ""  # the brain transform's confound strategy that censored them (exclude_short_scans)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int | None = MAX_LISTED) -> str:
        """Counts, then the problems (errors first) and the excluded subjects, `limit` of each (None: all)."""
        n_kept = sum(self.split_counts.values())
        splits = ", ".join(f"{s} {self.split_counts.get(s, 0)}" for s in SPLITS)
        lines = [
            f"cohort {self.manifest}: {n_kept} of {self.n_manifest} manifest subjects usable ({splits}; split from "
            f"{self.split_source}); {self.n_regions} regions, {self.n_parcels} parcels",
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)" + (":" if self.problems else ""),
        ]
        excluded = [f"  {k}: {v}" for k, v in self.excluded.items()]
        for title, items, attr in (
            (None, [f"  {p}" for p in self.errors + self.warnings], "problems"),
            (f"excluded subjects ({len(self.excluded)}):", excluded, "excluded"),
        ):
            if title and items:
                lines.append(title)
            lines += items[:limit]
            if limit is not None and len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more (report.{attr} lists all, as fusion.validate)")
        if self.vcf_only:
            lines.append(f"{len(self.vcf_only)} VCF sample(s) have no manifest row and are ignored")
        if self.censored:
            lost = sorted(self.censored.items(), key=lambda kv: -kv[1][0])
            total = sum(n for n, _ in self.censored.values())
            lines.append(
                f"volumes censored (brain.transform.confounds={self.censoring}: high-motion and non-steady-state "
                f"volumes, dropped before windows): {total} in {sum(n > 0 for n, _ in self.censored.values())} of "
                f"{len(lost)} subjects"
            )
            lines += [f"  {sid}: {n} of {of}" for sid, (n, of) in lost[:limit]]
            if limit is not None and len(lost) > limit:
                lines.append(f"  ... and {len(lost) - limit} more (report.censored lists all)")
        return "\n".join(lines)


@dataclass
class Cohort:
    """A loaded, checked cohort. Every file is parsed once, here; transforms, datamodule and model take what they need
    from this object (fusion.app.build), never from the files again."""

    files: dict[str, Path]  # manifest, vcf, reference, regions, atlas[, atlas_coords, genotypes]: the files as given
    subjects: pd.DataFrame  # usable subjects: subject_id, fmri (absolute), split, n_volumes, t_r, then covariates
    regions: list[Region]  # usable BED regions after exclusion, file order (the R axis)
    contig_lengths: dict[str, int]  # reference FASTA contig -> length
    atlas: object  # the label image (nibabel Nifti1Image held in memory)
    labels: np.ndarray  # sorted atlas labels (the P axis)
    coords: AtlasCoords | None = None  # parcel coordinates sorted by label (None without atlas_coords)
    covariates: dict[str, str] = field(default_factory=dict)  # manifest covariate -> "continuous" | "categorical"
    indexed_reference: Path | None = None  # a link to the FASTA indexed in the cache, when it had no index
    scans: ScanIndex = field(default_factory=ScanIndex)  # fmri (first run) -> the subject's runs (brain.scans)

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
        """The FASTA to read: as given, or its indexed link in the cache (cohort_checks.check_reference)."""
        return self.indexed_reference or self.files["reference"]

    def inputs(self, modality: str) -> dict[str, object]:
        """What a modality's transforms and encoders may ask for by constructor parameter name (fusion/encoders.py)."""
        if modality == "genomics":
            train = self.subjects.loc[self.subjects["split"] == "train", "subject_id"].tolist()
            return {
                "reference": self.reference, "vcf": self.vcf, "regions": self.regions, "n_regions": self.n_regions,
                "train_subjects": train, "genotypes": self.files.get("genotypes", self.vcf),
                "subjects": self.subjects,
            }  # fmt: skip
        if modality == "brain":
            return {
                "atlas": self.atlas, "labels": self.labels, "atlas_coords": self.coords, "coords": self.coords,
                "n_parcels": self.n_parcels, "scans": self.scans,
            }  # fmt: skip
        raise ValueError(f"modality must be 'genomics' or 'brain', got {modality!r}")


def exclude_short_scans(cohort: Cohort, report: CohortReport, transform, strict: bool = False) -> None:
    """Subjects the brain transform cannot use are excluded and reported (in place). `transform`: the brain
    transform, or only its window length (int or None). Its review(scan) (brain.scans.ScanReview), when it has one,
    reports per subject what makes the scan unusable (a volume encoder given parcels, a confounds table that does not
    load), TR mismatches (warnings; errors when strict) and the volumes censored (report.censored); then scans with
    fewer usable volumes than its window are excluded."""
    window = transform if transform is None or isinstance(transform, int) else getattr(transform, "window", None)
    review = getattr(transform, "review", None)
    if review is None and not window:
        return
    report.censoring = str(getattr(transform, "confounds", "none"))
    subjects, drop = cohort.subjects, []
    for row, (sid, path, n) in enumerate(subjects[["subject_id", "fmri", "n_volumes"]].itertuples(index=False)):
        where = f"{report.manifest}:{report.lines[sid]}" if sid in report.lines else str(report.manifest)
        errors, usable = [], n
        if review is not None:
            scan = cohort.scans.get(path) or Scan(sid, (Run(path, t_r=subjects["t_r"].iat[row], n_volumes=n),))
            found = review(scan)
            errors += found.errors
            for message in found.t_r:
                if strict:
                    errors.append(message)
                else:
                    report.problems.append(Problem("warning", where, f"subject {sid!r}: {message}"))
            if report.censoring != "none":
                report.censored[sid] = (found.lost, found.total)
            usable = max(found.usable, default=0)
        if window and usable < window and not errors:
            after = f" after censoring ({n} before)" if usable != n else ""
            errors.append(
                f"{path}: {usable} volumes{after}, fewer than the brain encoder's window of {window}; lower "
                f"brain.transform.window or drop the subject"
            )
        if errors:
            report.excluded[sid] = "; ".join(errors)
            report.problems += [Problem("error", where, f"subject {sid!r}: {e}") for e in errors]
            drop.append(row)
    if drop:
        if strict:
            raise CohortError(report.summary(), report)
        cohort.subjects = subjects.drop(index=subjects.index[drop]).reset_index(drop=True)
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
    checks: str = "cheap",
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    genotypes: str | Path | None = None,
) -> tuple[Cohort, CohortReport]:
    """Read and check a cohort (module docstring). `checks`: "cheap" (headers, the first REF sites; what every
    training run does), "full" (also every REF site, the FASTA's alphabet in the regions, three volumes per scan) or
    "deep" (every volume); kb/validation.md. `root`: every cohort file and fMRI path must resolve inside it.
    `cache_dir`: where a FASTA without an index gets one (never beside the FASTA). `genotypes`: the dosage
    baseline's genotype file when it is not the VCF (a PLINK 2 .pgen, PLINK 1 .bed or another VCF/BCF; checked by
    fusion.genotype_checks: a subject must be a sample of both)."""
    if checks not in LEVELS:
        raise ValueError(f"checks must be one of {LEVELS}, got {checks!r}")
    files = {"manifest": manifest, "vcf": vcf, "reference": reference, "regions": regions, "atlas": atlas}
    if atlas_coords is not None:
        files["atlas_coords"] = atlas_coords
    if genotypes is not None and Path(genotypes).expanduser() != Path(vcf).expanduser():
        files["genotypes"] = genotypes
    files = {k: Path(v).expanduser() for k, v in files.items()}
    root = Path(root).expanduser().resolve() if root is not None else None
    report = CohortReport(files["manifest"])
    problems = report.problems
    missing = [k for k, p in files.items() if not p.is_file()]
    for key in missing:
        problems.append(Problem("error", str(files[key]), f"{key} file not found (data.{key}=...)"))
    unusable = set(missing)
    for key, path in files.items():
        if root is not None and key not in missing and not checks_.inside(path, root):
            problems.append(Problem("error", str(path), f"resolves to {path.resolve()}, outside data.root={root}"))
            unusable.add(key)

    def attempt(key: str, fn, *args):
        """fn(*args), or None when the file is unusable (a CohortFatal becomes its problem)."""
        if key in unusable:
            return None
        try:
            return fn(*args)
        except CohortFatal as err:
            where, _, message = str(err).partition(": ")
            problems.append(Problem("error", where, message))
            unusable.add(key)
            return None

    table = attempt("manifest", checks_.read_table, files["manifest"], "manifest")
    absent = [c for c in REQUIRED if table is not None and c not in table.columns]
    if absent:
        problems.append(
            Problem(
                "error",
                str(files["manifest"]),
                f"missing column(s) {absent}; the manifest needs subject_id and fmri (and optionally split and "
                f"covariates), got {list(table.columns)}",
            )
        )
        unusable.add("manifest")
    samples, vcf_contigs, vf = attempt("vcf", checks_.check_vcf, files["vcf"], problems) or (None, set(), None)
    gsource = None  # the genotype source, when data.genotypes is not the VCF
    if "genotypes" in files:
        gsource = attempt("genotypes", genotype_checks.open_source, files["genotypes"], problems)
    lengths, fasta, indexed = attempt("reference", checks_.check_reference, files["reference"], cache_dir) or (
        None, None, None
    )  # fmt: skip
    regions: list[Region] = []
    if lengths is not None and "regions" not in unusable:
        regions = checks_.check_regions(files["regions"], lengths, vcf_contigs, files["vcf"], problems)
        checks_.check_vcf_contigs(files["vcf"], vcf_contigs, lengths, problems)
        full = checks != "cheap"
        owner = "vcf" if vf is not None else "reference"  # an unparsable VCF record makes the VCF unusable
        attempt(
            owner, check_genome, files["vcf"], vf, fasta, files["reference"], lengths, regions, problems,
            None if full else MAX_REF_CHECKS, full,
        )  # fmt: skip
        if gsource is not None:
            attempt(
                "genotypes", genotype_checks.check_sites, gsource, fasta, files["reference"], lengths, regions,
                problems, None if full else MAX_REF_CHECKS,
            )  # fmt: skip
    elif "regions" not in unusable:  # no usable FASTA: the BED's own lines are still checked
        problems += [Problem("error", *p.split(": ", 1)) for p in parse_bed(files["regions"])[1]]
    for handle in (vf, fasta, gsource):
        if handle is not None:
            handle.close()
    atlas_img, labels = attempt("atlas", _check_atlas, files["atlas"], problems) or (None, np.array([], int))
    coords = None
    if "atlas_coords" in files:
        coords = attempt("atlas_coords", checks_.check_coords, files["atlas_coords"], files["atlas"], labels, problems)
    cifti = str(files["atlas"]).lower().endswith(".dlabel.nii")
    scans = ScanChecks(atlas_img, labels, checks) if atlas_img is not None and not cifti else None
    atlas_info = None
    if len(labels):
        models = atlas_img.header.get_axis(1) if cifti else None
        atlas_info = AtlasInfo("cifti" if cifti else "volume", len(labels), models)
    scan_map = ScanIndex()
    subjects = pd.DataFrame(columns=[*REQUIRED, "split", *SCAN_COLUMNS])
    if "manifest" not in unusable:
        subjects, scan_map = _check_subjects(
            table, files["manifest"], samples, split_fractions, report, scans, root, atlas_info
        )
        if samples is not None:
            report.vcf_only = sorted(set(samples) - set(table["subject_id"].dropna().str.strip()))
        if gsource is not None and "genotypes" not in unusable:
            subjects = genotype_checks.pair_samples(subjects, gsource, report)
    if scans is not None:
        problems += scans.problems(str(files["manifest"]))
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
    if missing:
        listed = "\n  ".join(f"{k}: {files[k]}" for k in missing)
        raise CohortFileError(f"cohort file(s) not found:\n  {listed}\n{report.summary()}", report)
    if unusable:
        raise CohortError(f"cohort cannot be used ({', '.join(sorted(unusable))}):\n{report.summary()}", report)
    if strict and report.errors:
        raise CohortError(f"cohort has {len(report.errors)} error(s) (strict=True):\n{report.summary()}", report)
    if subjects.empty:
        raise CohortError(f"no usable subject in the cohort:\n{report.summary()}", report)
    covariates = {
        c: "continuous" if pd.api.types.is_numeric_dtype(subjects[c]) else "categorical"
        for c in subjects.columns
        if c not in (*REQUIRED, "split", *SCAN_COLUMNS)
    }
    cohort = Cohort(files, subjects, regions, lengths, atlas_img, labels, coords, covariates, scans=scan_map)
    cohort.indexed_reference = indexed if indexed != files["reference"] else None
    return cohort, report


def _check_atlas(path: Path, problems: list[Problem]):
    """(atlas image in memory, sorted labels): a label NIfTI (cohort_checks.check_atlas) or a CIFTI-2 .dlabel.nii."""
    if not str(path).lower().endswith(".dlabel.nii"):
        return checks_.check_atlas(path, problems)
    from brain.cifti import read_dlabel

    try:
        return read_dlabel(path)
    except ValueError as err:
        raise CohortFatal(str(err)) from err


def _check_subjects(
    table, manifest: Path, samples: list[str] | None, split_fractions, report: CohortReport,
    scans: ScanChecks | None = None, root: Path | None = None, atlas: AtlasInfo | None = None,
) -> tuple[pd.DataFrame, ScanIndex]:  # fmt: skip
    """Manifest rows -> (usable subjects, {fmri: Scan}); every per-subject problem reported and the subject excluded
    (samples None: the VCF is unusable, not checked here; scans None: no usable NIfTI atlas, scans checked alone).
    Each row's runs, confounds, masks and TR: fusion.scan_checks.check_runs."""
    table = table.dropna(how="all")  # blank lines (line numbers stay right: index = line - 2)
    report.n_manifest = len(table)
    reasons: dict[int, list[str]] = {}  # row index -> reasons
    volumes: dict[int, tuple[int, float]] = {}  # row index -> (volumes, repetition time in s) from the header
    run_lists: dict[int, list] = {}  # row index -> its runs (brain.scans.Run)

    def bad(i: int, sid, message: str, short: str) -> None:
        who = f"subject {sid!r}: " if isinstance(sid, str) else ""
        report.problems.append(Problem("error", f"{manifest}:{i + 2}", who + message))
        reasons.setdefault(i, []).append(short)

    def warn(i: int, sid: str, message: str) -> None:
        report.problems.append(Problem("warning", f"{manifest}:{i + 2}", f"subject {sid!r}: {message}"))

    samples = set(samples) if samples is not None else None

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
        if samples is not None and sid not in samples:
            bad(i, sid, "not a sample of the VCF (no genotypes)", "not in VCF")
        runs, found = check_runs(table.loc[i].to_dict(), manifest, scans, atlas, root)
        for severity, message, short in found:
            if severity == "error":
                bad(i, sid, message, short)
            else:
                warn(i, sid, message)
        if runs is None:
            continue
        table.loc[i, "fmri"] = runs[0].path
        volumes[i] = (max(r.n_volumes for r in runs), runs[0].t_r)
        run_lists[i] = runs
    for i, why in reasons.items():
        key = ids[i] if isinstance(ids[i], str) else f"line {i + 2}"
        previous = report.excluded[key].split("; ") if key in report.excluded else []
        report.excluded[key] = "; ".join(dict.fromkeys(previous + why))
    keep = table.drop(index=list(reasons)).drop(columns=[c for c in FILE_COLUMNS if c in table.columns]).copy()
    scan_map = ScanIndex({runs[0].path: Scan(ids[i], tuple(runs)) for i, runs in run_lists.items() if i not in reasons})
    keep["subject_id"] = keep["subject_id"].str.strip()
    keep["n_volumes"] = [volumes[i][0] for i in keep.index]
    keep["t_r"] = [volumes[i][1] for i in keep.index]
    report.lines = {sid: i + 2 for i, sid in keep["subject_id"].items()}
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
    return keep[columns].reset_index(drop=True), scan_map
