"""Parcel time series from a 4D NIfTI with an atlas (nilearn NiftiLabelsMasker), cut into time windows.

Transform for the parcel-based encoders (functional connectivity, BrainLM):
    ParcelTimeSeries(atlas)(fmri_path, train=..., rng=...) -> FloatTensor (W, T, P)
Parcel signal = mean of its voxels (NaN voxels -> 0 first, as BrainLM does); the atlas is resampled to the scan when
affines differ (nilearn, nearest-neighbour labels). Optional nilearn cleaning (detrend, band-pass, z-scoring).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brain.errors import BrainInputError
from brain.windows import cut_windows


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


class ParcelTimeSeries:
    """4D NIfTI -> (W, T, P) parcel time series windows; P = number of atlas labels (label order = sorted labels)."""

    def __init__(
        self,
        atlas: str | Path | nib.Nifti1Image,  # label image (path or image held in memory), 0 = background
        labels: np.ndarray | None = None,  # its sorted non-zero labels when already known (the cohort's); else read
        window: int | None = None,  # frames per window (None: the whole scan, W = 1)
        n_eval_windows: int = 1,  # evenly spaced windows at evaluation
        standardize: bool = True,  # z-score each parcel over time within the window
        detrend: bool = False,
        low_pass: float | None = None,  # Hz; needs t_r
        high_pass: float | None = None,  # Hz; needs t_r
        t_r: float | None = None,  # seconds; read from the header when None and filtering is on
        cache: bool = True,  # keep each scan's parcel series in memory (per process) after the first read
    ):
        self.atlas = atlas
        self._labels = None if labels is None else np.asarray(labels, dtype=int)
        self.window, self.n_eval_windows = window, n_eval_windows
        self.standardize, self.detrend = standardize, detrend
        self.low_pass, self.high_pass, self.t_r = low_pass, high_pass, t_r
        self.cache = cache
        self._masker = None  # built lazily, per process
        self._series: dict[str, np.ndarray] = {}  # path -> (T, P), when cache is on
        self._t_r: dict[str, float] = {}  # path -> repetition time from the scan's header

    def __getstate__(self):  # picklable for dataloader workers
        return {**self.__dict__, "_masker": None, "_series": {}, "_t_r": {}}

    @property
    def labels(self) -> np.ndarray:
        """Sorted non-zero atlas labels: the parcel order of the P axis (read once)."""
        if self._labels is None:
            data = np.asarray(self._atlas_image().dataobj)
            self._labels = np.unique(data[data != 0]).astype(int)
        return self._labels

    def _atlas_image(self) -> nib.Nifti1Image:
        if isinstance(self.atlas, nib.spatialimages.SpatialImage):
            return self.atlas
        if not Path(self.atlas).exists():
            raise FileNotFoundError(f"atlas not found: {self.atlas}")
        self.atlas = nib.load(str(self.atlas))
        return self.atlas

    def _get_masker(self):
        if self._masker is None:
            from nilearn.maskers import NiftiLabelsMasker

            self._n_parcels = len(self.labels)
            self._masker = NiftiLabelsMasker(
                labels_img=self._atlas_image(), strategy="mean", resampling_target="data", standardize=None
            ).fit()
        return self._masker

    def parcel_series(self, fmri_path: str | Path) -> np.ndarray:
        """The whole scan as (T, P) float32 parcel means (no cleaning)."""
        key = str(fmri_path)
        if key in self._series:
            return self._series[key]
        masker = self._get_masker()
        img = load_bold(fmri_path)
        series = masker.transform(img).astype(np.float32)  # (T, P')
        if series.shape[1] != self._n_parcels:
            raise BrainInputError(
                f"{fmri_path}: {series.shape[1]} of the atlas's {self._n_parcels} parcels fall inside the scan's field "
                f"of view; check the scan is in the atlas space"
            )
        if self.t_r is None:
            self._t_r[key] = float(img.header.get_zooms()[3])  # seconds, for band-pass filtering
        if self.cache:
            self._series[key] = series
        return series

    def __call__(self, fmri_path: str | Path, *, train: bool = False, rng=None) -> torch.Tensor:
        series = self.parcel_series(fmri_path)  # (T, P)
        windows = cut_windows(
            series, self.window, train=train, n_eval_windows=self.n_eval_windows, rng=rng, source=str(fmri_path)
        )  # (W, T, P)
        return torch.from_numpy(np.stack([self._clean(w, fmri_path) for w in windows]))

    def _clean(self, series: np.ndarray, fmri_path) -> np.ndarray:
        if not (self.standardize or self.detrend or self.low_pass or self.high_pass):
            return series
        from nilearn.signal import clean

        t_r = self.t_r if self.t_r is not None else self._t_r.get(str(fmri_path))
        out = clean(
            series,
            detrend=self.detrend,
            standardize="zscore_sample" if self.standardize else None,
            low_pass=self.low_pass,
            high_pass=self.high_pass,
            t_r=t_r,
        )
        return out.astype(np.float32)
