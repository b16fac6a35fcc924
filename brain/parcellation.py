"""Parcel time series from a subject's fMRI runs with an atlas, cut into time windows (FC and BrainLM inputs).

Transform for the parcel-based encoders (functional connectivity, BrainLM):
    ParcelTimeSeries(atlas)(fmri_path, train=..., rng=...) -> FloatTensor (W, T, P)
Inputs (brain.scans.input_kind): a 4D NIfTI (parcel means through nilearn's NiftiLabelsMasker; NaN voxels -> 0 first,
as BrainLM does; the atlas is resampled to the scan when affines differ, nearest-neighbour labels; the run's brain
mask, when the manifest gives one, restricts the parcels), a CIFTI-2 .dtseries.nii with a .dlabel.nii atlas
(brain.cifti), or an already parcellated series (time x parcels, .npy/.tsv/.csv; the masker is skipped, P must equal
the atlas's label count, columns in label order).

Confounds (`confounds=none|simple|scrubbing|compcor`, brain.confounds): with a strategy, each run's confounds table
(the manifest's `confounds` column) is read with nilearn's load_confounds_strategy and regressed out of the whole
run's parcel series by nilearn.signal.clean together with detrend and the band-pass (one projection; the confounds
are filtered like the signal), and censored volumes (scrubbing's high-motion ones, non-steady-state ones) are dropped
before windows are cut, so no window contains them. Regressing parcel means equals averaging regressed voxels (the
regression is linear; tests/brain/test_confounds.py checks it against NiftiLabelsMasker(confounds=...)), at a
fraction of the cost. Windows are then z-scored (standardize). Without confounds, detrend/band-pass/z-scoring apply
per window (as before). Several runs: brain.windows.cut_run_windows. TR (`t_r`, else the manifest's, else the
header's) is checked against `expected_t_r` by review() (fusion.cohort reports it), or with resample_t_r=true each
run whose TR differs is resampled to it in time (resample_series).

Sharing: with `cache` on, a scan's run series are also kept in a process-wide store keyed by the atlas file, every
setting that changes them and each run file's (path, size, modification time) and its confounds / mask files', so the
transforms of several runs in one process (fusion.compare's cells, train then export) read and parcellate each scan
once (SHARED_MAX_BYTES bounds it; the oldest entries go first).

Batching: `window=None` keeps every retained volume of each subject (whole scan, runs concatenated), so scans in a
batch differ in length; the datamodule batches them with `ParcelTimeSeries.collate` (brain.windows.collate_windows:
the shorter padded with NaN frames, which FunctionalConnectivity ignores), never by cropping.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brain.confounds import check_strategy, load_confounds
from brain.errors import BrainInputError
from brain.scans import Run, Scan, ScanReview, read_parcel_table, scan_for
from brain.windows import collate_windows, cut_run_windows

SHARED_MAX_BYTES = 2 << 30  # the process-wide store of run series (module docstring, "Sharing")
_SHARED: OrderedDict[tuple, tuple[list[np.ndarray], float | None]] = OrderedDict()  # key -> (runs, first run's TR)


def _file_id(path) -> tuple | None:
    """(resolved path, size, mtime_ns) of a file; None for no file."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:  # reading it raises the error that names it (load_bold, read_parcel_table)
        return (str(path), None)
    return (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _share(key: tuple, runs: list[np.ndarray], t_r: float | None) -> None:
    for x in runs:
        x.setflags(write=False)  # shared between transforms: nobody may change them in place
    _SHARED[key] = (runs, t_r)
    total = sum(x.nbytes for entry in _SHARED.values() for x in entry[0])
    while total > SHARED_MAX_BYTES and len(_SHARED) > 1:
        old, _ = _SHARED.popitem(last=False)
        total -= sum(x.nbytes for x in old)


def load_bold(path: str | Path, *, min_frames: int = 2) -> nib.Nifti1Image:
    """Load a 4D BOLD image; NaN/inf voxels become 0. Errors name the file and say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"fMRI file not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for corrupt files
        raise BrainInputError(f"{path}: not a readable NIfTI image ({err})") from err
    if img.ndim != 4:
        raise BrainInputError(f"{path}: expected a 4D BOLD image, got shape {img.shape}")
    if img.shape[3] < min_frames:
        raise BrainInputError(f"{path}: only {img.shape[3]} volumes; need at least {min_frames}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    return nib.Nifti1Image(data, img.affine, img.header)


def is_cifti_atlas(atlas) -> bool:
    return isinstance(atlas, nib.Cifti2Image) or str(atlas).lower().endswith(".dlabel.nii")


def check_t_r(scan: Scan, expected: float | None, tolerance: float) -> list[str]:
    """Messages for runs whose TR differs from `expected` by more than `tolerance` (relative), or is unknown."""
    if expected is None:
        return []
    out = []
    for run in scan.runs:
        if run.t_r is None or not np.isfinite(run.t_r):
            out.append(f"{run.path}: repetition time unknown (add a t_r column); the encoder expects {expected:g} s")
        elif abs(run.t_r - expected) > tolerance * expected:
            out.append(
                f"{run.path}: repetition time {run.t_r:g} s, but the encoder was trained at {expected:g} s "
                f"(brain.transform.expected_t_r; more than {tolerance:.0%} apart): its temporal patterns will not "
                f"match; set brain.transform.resample_t_r=true, or use a model trained at this TR"
            )
    return out


def resample_series(series: np.ndarray, times: np.ndarray, t_r: float) -> np.ndarray:
    """(T, P) samples at `times` (s, ascending) -> (T', P) at a regular t_r from times[0] (scipy CubicSpline; censored
    gaps are interpolated across)."""
    from scipy.interpolate import CubicSpline

    grid = times[0] + np.arange(int(np.floor((times[-1] - times[0]) / t_r)) + 1) * t_r
    return CubicSpline(times, series, axis=0)(grid).astype(np.float32)  # (T', P)


class ParcelTimeSeries:
    """fMRI runs -> (W, T, P) parcel time series windows; P = number of atlas labels (label order = sorted labels)."""

    # [(W, T_i, P)] -> (B, W, max T_i, P): batches whole scans of different lengths (NaN frames pad the shorter)
    collate = staticmethod(collate_windows)

    def __init__(
        self,
        atlas: str | Path | nib.Nifti1Image,  # label image (NIfTI, or CIFTI .dlabel.nii), 0 = background
        labels: np.ndarray | None = None,  # its sorted non-zero labels when already known (the cohort's); else read
        window: int | None = None,  # frames per window (None: the whole scan, W = 1)
        n_eval_windows: int = 1,  # evenly spaced windows at evaluation
        standardize: bool = True,  # z-score each parcel over time within the window
        detrend: bool = False,
        low_pass: float | None = None,  # Hz; needs t_r
        high_pass: float | None = None,  # Hz; needs t_r
        t_r: float | None = None,  # seconds; else the manifest's t_r, else the header's
        cache: bool = True,  # keep each scan's parcel series in memory (per process) after the first read
        confounds: str = "none",  # none | simple | scrubbing | compcor: regressed and censored (brain.confounds)
        scans: dict[str, Scan] | None = None,  # {fmri path: Scan} (the cohort's): runs, confounds, masks, TRs
        expected_t_r: float | None = None,  # the encoder's training TR (s), checked by review(); None = any
        t_r_tolerance: float = 0.1,  # relative TR difference accepted by review()
        resample_t_r: bool = False,  # resample runs whose TR differs to expected_t_r (cubic spline in time)
    ):
        self.atlas = atlas
        self._labels = None if labels is None else np.asarray(labels, dtype=int)
        self.window, self.n_eval_windows = window, n_eval_windows
        self.standardize, self.detrend = standardize, detrend
        self.low_pass, self.high_pass, self.t_r = low_pass, high_pass, t_r
        self.cache = cache
        self.confounds = check_strategy(confounds)
        self.scans = scans
        self.expected_t_r, self.t_r_tolerance, self.resample_t_r = expected_t_r, t_r_tolerance, resample_t_r
        self._masker = None  # built lazily, per process
        self._series: dict[str, list[np.ndarray]] = {}  # path -> runs' (T, P) series, when cache is on
        self._t_r: dict[str, float] = {}  # path -> repetition time of its first run (for per-window filtering)

    def __getstate__(self):  # picklable for dataloader workers
        return {**self.__dict__, "_masker": None, "_series": {}, "_t_r": {}}

    @property
    def labels(self) -> np.ndarray:
        """Sorted non-zero atlas labels: the parcel order of the P axis (read once)."""
        if self._labels is None:
            data = np.asarray(self._atlas_image().dataobj)
            self._labels = np.unique(data[data != 0]).astype(int)
        return self._labels

    def _atlas_image(self):
        if isinstance(self.atlas, nib.spatialimages.SpatialImage | nib.Cifti2Image):
            return self.atlas
        if not Path(self.atlas).exists():
            raise FileNotFoundError(f"atlas not found: {self.atlas}")
        self.atlas = nib.load(str(self.atlas))
        return self.atlas

    def _get_masker(self, mask: str | None = None):
        from nilearn.maskers import NiftiLabelsMasker

        if is_cifti_atlas(self.atlas):
            raise BrainInputError("a CIFTI .dlabel.nii atlas parcellates .dtseries.nii inputs, not NIfTI volumes")
        kwargs = dict(labels_img=self._atlas_image(), strategy="mean", resampling_target="data", standardize=None)
        if mask is not None:  # per run: not kept
            return NiftiLabelsMasker(mask_img=str(mask), **kwargs).fit()
        if self._masker is None:
            self._masker = NiftiLabelsMasker(**kwargs).fit()
        return self._masker

    def _raw(self, run: Run) -> tuple[np.ndarray, float | None]:
        """(run's (T, P) float32 parcel means, its TR in seconds or None)."""
        kind, p = run.kind, len(self.labels)
        if kind == "parcels":
            series = read_parcel_table(run.path)
            if series.shape[1] != p:
                raise BrainInputError(
                    f"{run.path}: {series.shape[1]} columns, but the atlas has {p} parcels; a parcellated series "
                    f"needs one column per atlas label, in label order"
                )
            return series, run.t_r
        if kind == "cifti":
            from brain.cifti import cifti_parcel_series, cifti_shape

            if not is_cifti_atlas(self.atlas):
                raise BrainInputError(f"{run.path}: a .dtseries.nii needs a .dlabel.nii atlas (data.atlas=...)")
            series = cifti_parcel_series(run.path, self._atlas_image(), self.labels)
            return series, run.t_r if run.t_r is not None else cifti_shape(run.path)[1]
        img = load_bold(run.path)
        series = self._get_masker(run.mask).transform(img).astype(np.float32)  # (T, P')
        if series.shape[1] != p:
            raise BrainInputError(
                f"{run.path}: {series.shape[1]} of the atlas's {p} parcels fall inside the scan's field of view"
                + (f" and brain mask {run.mask}" if run.mask else "")
                + "; check the scan is in the atlas space"
            )
        return series, run.t_r if run.t_r is not None else float(img.header.get_zooms()[3])

    def run_series(self, fmri_path: str | Path) -> list[np.ndarray]:
        """The subject's runs as (T_r, P) float32 series: raw parcel means (confounds none), or with the confounds
        regressed (with detrend and band-pass) and censored volumes dropped; resampled to expected_t_r when
        resample_t_r is on and the run's TR differs."""
        key = str(fmri_path)
        if key in self._series:
            return self._series[key]
        shared = self._shared_key(fmri_path) if self.cache else None
        if shared in _SHARED:
            out, t_r = _SHARED[shared]
            if t_r is not None:
                self._t_r[key] = t_r
            self._series[key] = out
            return out
        out = []
        for i, run in enumerate(scan_for(self.scans, fmri_path).runs):
            series, t_r = self._raw(run)
            t_r = self.t_r if self.t_r is not None else t_r
            kept = np.arange(series.shape[0])  # volume indices of the rows of `series`
            if self.confounds != "none":
                series, kept = self._regress(series, run, t_r)
            if self._resamples(t_r):
                series = resample_series(series, kept * t_r, self.expected_t_r)
                t_r = self.expected_t_r
            if i == 0 and t_r is not None:
                self._t_r[key] = t_r
            out.append(series)
        if self.cache:
            self._series[key] = out
            if shared is not None:
                _share(shared, out, self._t_r.get(key))
        return out

    def _shared_key(self, fmri_path: str | Path) -> tuple | None:
        """The process-wide store's key of a scan's run series (module docstring); None when the atlas is an image
        object (no file to identify it by)."""
        if isinstance(self.atlas, nib.Nifti1Image | nib.Cifti2Image):
            return None
        runs = tuple(
            (_file_id(r.path), _file_id(r.confounds), _file_id(r.mask), r.t_r, r.n_volumes)
            for r in scan_for(self.scans, fmri_path).runs
        )
        settings = (self.detrend, self.low_pass, self.high_pass, self.t_r, self.confounds, self.expected_t_r,
                    self.t_r_tolerance, self.resample_t_r)  # fmt: skip
        labels = None if self._labels is None else tuple(self._labels.tolist())
        return (_file_id(self.atlas), labels, settings, runs)

    def _resamples(self, t_r: float | None) -> bool:
        if not self.resample_t_r or self.expected_t_r is None or t_r is None:
            return False
        return abs(t_r - self.expected_t_r) > self.t_r_tolerance * self.expected_t_r

    def parcel_series(self, fmri_path: str | Path) -> np.ndarray:
        """The first run as (T, P) float32 (run_series)."""
        return self.run_series(fmri_path)[0]

    def _regress(self, series: np.ndarray, run: Run, t_r: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(cleaned (T kept, P) series, indices of the kept volumes)."""
        from nilearn.signal import clean

        if run.confounds is None:
            raise BrainInputError(self._no_table(run))
        confounds, sample_mask = load_confounds(run.confounds, self.confounds, n_volumes=series.shape[0])
        if (self.low_pass or self.high_pass) and t_r is None:
            raise BrainInputError(f"{run.path}: band-pass filtering needs the repetition time; add a t_r column")
        out = clean(
            series, confounds=confounds, sample_mask=sample_mask, detrend=self.detrend, standardize=None,
            standardize_confounds=True, low_pass=self.low_pass, high_pass=self.high_pass, t_r=t_r,
        )  # fmt: skip
        kept = np.arange(series.shape[0]) if sample_mask is None else sample_mask
        return np.asarray(out, dtype=np.float32), kept

    def _no_table(self, run: Run) -> str:
        return (
            f"{run.path}: confounds={self.confounds} but the manifest names no confounds table for it; add a "
            f"`confounds` column (python -m fusion.manifest writes it) or set brain.transform.confounds=none"
        )

    def review(self, scan: Scan) -> ScanReview:
        """Before training (fusion.cohort): volumes kept per run after censoring, the TR check, and what makes the
        subject unusable (a confounds table missing or unreadable)."""
        review = ScanReview()
        if not self.resample_t_r:
            review.t_r = check_t_r(scan, self.expected_t_r, self.t_r_tolerance)
        for run in scan.runs:
            n = run.n_volumes or 0
            review.total += n
            kept = n
            if self.confounds != "none":
                if run.confounds is None:
                    review.errors.append(self._no_table(run))
                    continue
                try:
                    _, sample_mask = load_confounds(run.confounds, self.confounds, n_volumes=run.n_volumes)
                except (BrainInputError, FileNotFoundError) as err:
                    review.errors.append(str(err))
                    continue
                kept = n if sample_mask is None else len(sample_mask)
            review.lost += n - kept
            if self._resamples(run.t_r):
                kept = int(np.floor((kept - 1) * run.t_r / self.expected_t_r)) + 1
            review.usable.append(kept)
        return review

    def __call__(self, fmri_path: str | Path, *, train: bool = False, rng=None) -> torch.Tensor:
        runs = self.run_series(fmri_path)  # [(T_r, P)]
        windows = cut_run_windows(
            runs, self.window, train=train, n_eval_windows=self.n_eval_windows, rng=rng, source=str(fmri_path)
        )  # (W, T, P)
        return torch.from_numpy(np.stack([self._clean(w, fmri_path) for w in windows]))

    def _clean(self, series: np.ndarray, fmri_path) -> np.ndarray:
        filtered = self.confounds == "none"  # with confounds, detrend and band-pass ran on the whole run
        if not (self.standardize or (filtered and (self.detrend or self.low_pass or self.high_pass))):
            return series
        from nilearn.signal import clean

        t_r = self.t_r if self.t_r is not None else self._t_r.get(str(fmri_path))
        out = clean(
            series,
            detrend=self.detrend and filtered,
            standardize="zscore_sample" if self.standardize else None,
            low_pass=self.low_pass if filtered else None,
            high_pass=self.high_pass if filtered else None,
            t_r=t_r,
        )
        return out.astype(np.float32)
