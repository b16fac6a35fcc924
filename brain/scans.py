"""A subject's fMRI input as the brain transforms see it: one or more runs, each with optional confounds, mask and TR.

    scan = Scan("sub-0001", (Run("/d/sub-0001_bold.nii.gz", confounds="/d/..._timeseries.tsv", t_r=0.8),))
    input_kind(path)   # "volume" (4D NIfTI) | "cifti" (CIFTI-2 dense series .dtseries.nii) | "parcels" (time x parcels)
    read_parcel_table(path)  # (T, P) float32 from .npy / .tsv / .csv (an optional header row of parcel names)

The cohort (fusion.cohort) builds one Scan per subject from the manifest and hands the transforms a mapping
{first run's fMRI path: Scan} (constructor parameter `scans`), so a transform called with a subject's `fmri` path
finds its runs, confounds table, brain mask and repetition time. A transform asked for a path it was not given (a
direct call, tests) treats it as one run with nothing attached. Each transform's `review(scan)` returns a ScanReview:
what the cohort report shows (volumes lost to censoring, TR mismatches) and why a subject cannot be used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brain.errors import BrainInputError

PARCEL_SUFFIXES = (".npy", ".tsv", ".csv")  # already parcellated series, time x parcels
RUN_SEP = ";"  # joins a subject's runs in the manifest's fmri / confounds / mask cells (fusion.manifest writes it)
KINDS = ("volume", "cifti", "parcels")


def input_kind(path: str | Path) -> str:
    """The kind of an fMRI input, from its file name (module docstring); BrainInputError for anything else."""
    name = str(path).lower()
    if name.endswith(".dtseries.nii"):
        return "cifti"
    if name.endswith((".nii", ".nii.gz")):
        return "volume"
    if name.endswith(PARCEL_SUFFIXES):
        return "parcels"
    raise BrainInputError(
        f"{path}: unknown fMRI input type; use a 4D NIfTI (.nii/.nii.gz), a CIFTI-2 dense series (.dtseries.nii) or "
        f"a parcellated series, time x parcels ({', '.join(PARCEL_SUFFIXES)})"
    )


@dataclass(frozen=True)
class Run:
    path: str  # the run's fMRI input (input_kind)
    confounds: str | None = None  # fMRIPrep-style confounds TSV (one row per volume)
    mask: str | None = None  # brain mask NIfTI on the run's grid (volumes only)
    t_r: float | None = None  # repetition time in seconds (manifest t_r column, else the file's header)
    n_volumes: int | None = None  # volumes (time points), from the header when the cohort read it

    @property
    def kind(self) -> str:
        return input_kind(self.path)


@dataclass(frozen=True)
class Scan:
    subject_id: str  # for messages
    runs: tuple[Run, ...]  # in manifest order; runs[0].path is the subject's `fmri` in the cohort table

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def t_r(self) -> float | None:
        return self.runs[0].t_r


@dataclass
class ScanReview:
    """What a transform found for one subject before any compute (fusion.cohort reports it)."""

    usable: list[int] = field(default_factory=list)  # volumes per run left for windows (after censoring)
    lost: int = 0  # volumes censored (scrubbing, non-steady-state), all runs together
    total: int = 0  # volumes before censoring, all runs together
    errors: list[str] = field(default_factory=list)  # the subject cannot be used (each says what to do)
    t_r: list[str] = field(default_factory=list)  # TR mismatches: a warning, an error with data.strict=true


class ScanIndex(Mapping):
    """{first run's fMRI path: Scan}, read-only. A Mapping, not a dict, on purpose: Hydra's instantiate turns dicts of
    dataclasses passed as arguments into OmegaConf nodes (a minute for 5,000 subjects on 2 cores); this it keeps."""

    def __init__(self, scans: dict[str, Scan] | None = None):
        self._scans = dict(scans or {})

    def __getitem__(self, path: str) -> Scan:
        return self._scans[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scans)

    def __len__(self) -> int:
        return len(self._scans)


def scan_for(scans: Mapping | None, path: str | Path) -> Scan:
    """The Scan a transform was given for this path, or the path alone as one run."""
    scan = (scans or {}).get(str(path))
    return scan if scan is not None else Scan(str(path), (Run(str(path)),))


def read_parcel_table(path: str | Path) -> np.ndarray:
    """A parcellated series, (T, P) float32: .npy (2D array) or .tsv/.csv (numbers; an optional first row of names)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parcellated series not found: {path}")
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            table = pd.read_csv(path, sep=sep, header=None, dtype=str)
            first = pd.to_numeric(table.iloc[0], errors="coerce")
            if first.isna().all():  # a header row of parcel names
                table = table.iloc[1:]
            data = table.apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float32)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise BrainInputError(f"{path}: not a readable parcellated series, time x parcels ({err})") from err
    if data.ndim != 2 or data.shape[0] < 2:
        raise BrainInputError(f"{path}: a parcellated series must be 2D, time x parcels (>= 2 rows), got {data.shape}")
    if not np.isfinite(data).all():
        raise BrainInputError(f"{path}: {int((~np.isfinite(data)).sum())} NaN/Inf value(s); fix the series")
    return np.ascontiguousarray(data, dtype=np.float32)


def parcel_table_shape(path: str | Path) -> tuple[int, int]:
    """(T, P) of a parcellated series; reads only the header of a .npy."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BrainInputError(f"{path}: not a readable .npy array ({err})") from err
        if arr.ndim != 2:
            raise BrainInputError(f"{path}: a parcellated series must be 2D, time x parcels, got {arr.shape}")
        return int(arr.shape[0]), int(arr.shape[1])
    return read_parcel_table(path).shape
