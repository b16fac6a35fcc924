"""Preprocessing steps shared by the fMRI encoders' transforms (numpy / nibabel / nilearn, no torch).

Parcel series (BrainLM, Ortega Caro et al. 2024, vandijklab/BrainLM `toolkit/BrainLM_Toolkit.py`):
    robust_scale     per parcel: subtract the temporal mean, then (x - median) / IQR. Upstream computes the median and
                     IQR over its training cohort (never published, BrainLM issue #23) and has a precedence bug
                     (`x - median / IQR`, issue #19); here the default uses per-scan statistics and the correct formula,
                     `stats=` takes cohort statistics (fit_robust_stats) and `formula="upstream"` reproduces the bug.
Volumes (SwiFT, Kim et al. 2023, Transconnectome/SwiFT `preprocessing.py`; BrainMT, Kannan et al. 2025, same recipe):
    znorm_volume     z-score over foreground voxels of the whole scan (mean/std pooled over voxels and frames),
                     background set to the minimum normalised foreground value (or 0)
    crop_or_pad      to the encoder's grid, centred on the brain's bounding box when cropping
    resample_bold    to a target voxel size or reference grid (nilearn) when the affines differ
Atlas coordinates: read_atlas_coords reads the cohort's table (label, x, y, z in MNI mm; optional name/network).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brain.errors import BrainInputError

# --------------------------------------------------------------------------------------------- atlas coordinates


@dataclass(frozen=True)
class AtlasCoords:
    labels: np.ndarray  # (P,) int, ascending: the parcel order of every (T, P) series
    xyz: np.ndarray  # (P, 3) float32, MNI mm
    names: list[str] | None
    source: str = "atlas coordinates"  # the table it was read from (for messages)

    def __str__(self) -> str:
        return self.source


def read_atlas_coords(path: str | Path | AtlasCoords) -> AtlasCoords:
    """Coordinates table (CSV or TSV, header with label, x, y, z; case-insensitive), sorted by label.

    An AtlasCoords (e.g. the cohort's, already read and checked) is returned as it is."""
    import pandas as pd

    if isinstance(path, AtlasCoords):
        return path
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"atlas coordinates table not found: {path}")
    table = pd.read_csv(path, sep=None, engine="python")
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("label", "x", "y", "z") if c not in table.columns]
    if missing:
        raise BrainInputError(
            f"{path}: missing column(s) {missing}; need label, x, y, z (MNI mm), got {list(table.columns)}"
        )
    table = table.sort_values("label", kind="stable")
    labels = table["label"].to_numpy().astype(int)
    if len(np.unique(labels)) != len(labels):
        raise BrainInputError(f"{path}: duplicate labels in the coordinates table")
    xyz = table[["x", "y", "z"]].to_numpy(dtype=np.float32)
    if not np.isfinite(xyz).all():
        raise BrainInputError(f"{path}: non-finite coordinates")
    names = [str(n) for n in table["name"]] if "name" in table.columns else None
    return AtlasCoords(labels, xyz, names, str(path))


# ------------------------------------------------------------------------------------------------- parcel series


def fit_robust_stats(series: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Cohort median and IQR per parcel (BrainLM's recipe): over mean-centred (T, P) series of the training split;
    the median over all values, the quartiles over the non-zero ones. Returns (median (P,), iqr (P,))."""
    data = np.concatenate([s - s.mean(axis=0, keepdims=True) for s in series], axis=0)  # (sum T, P)
    median = np.median(data, axis=0)
    nonzero = np.where(data == 0, np.nan, data)
    with warnings.catch_warnings():  # all-zero (empty) parcels: NaN quartiles, IQR 0
        warnings.simplefilter("ignore", RuntimeWarning)
        q25, q75 = np.nanpercentile(nonzero, [25, 75], axis=0)
    return median.astype(np.float32), np.nan_to_num(q75 - q25).astype(np.float32)


def robust_scale(
    series: np.ndarray,  # (T, P)
    median: np.ndarray | None = None,  # (P,) cohort statistics; None = this scan's
    iqr: np.ndarray | None = None,
    formula: str = "correct",  # "correct": (x - median) / iqr; "upstream": x - median / iqr (BrainLM issue #19)
) -> np.ndarray:
    """Per-parcel robust scaling of a mean-centred series; parcels with IQR 0 (empty, constant) are only centred."""
    x = series - series.mean(axis=0, keepdims=True)  # (T, P)
    if median is None or iqr is None:
        median, iqr = fit_robust_stats([series])
    median = np.nan_to_num(np.asarray(median, dtype=np.float32))
    iqr = np.asarray(iqr, dtype=np.float32)
    if median.shape != (x.shape[1],) or iqr.shape != (x.shape[1],):
        raise ValueError(
            f"robust statistics have shape {median.shape}/{iqr.shape}; the series has {x.shape[1]} parcels"
        )
    safe = np.where(np.isfinite(iqr) & (iqr > 0), iqr, 1.0).astype(np.float32)
    if formula == "correct":
        out = (x - median) / safe
    elif formula == "upstream":
        out = x - median / safe
    else:
        raise ValueError(f"formula must be 'correct' or 'upstream', got {formula!r}")
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------------- volumes


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z, T) -> (X, Y, Z) bool: voxels that are non-zero in at least one frame (masked MNI data: 0 = outside)."""
    return np.any(data != 0, axis=-1)


def znorm_volume(data: np.ndarray, mask: np.ndarray | None = None, background: str = "min") -> tuple[np.ndarray, float]:
    """Per-scan z-normalisation over the foreground; returns (float32 (X, Y, Z, T), background value).

    Mean and std pool all foreground voxels of all frames (SwiFT/BrainMT); background voxels are set to the minimum
    normalised foreground value ("min", upstream default) or 0 ("zero", upstream fill_zeroback). Works frame by frame
    to avoid copies of long scans. Upstream marks background element-wise (value == 0); here a voxel is background
    when it is 0 in every frame, so in-brain voxels that touch 0 in one frame are not clobbered.
    """
    if background not in ("min", "zero"):
        raise ValueError(f"background must be 'min' or 'zero', got {background!r}")
    out = np.array(data, dtype=np.float32, copy=True)
    mask = foreground_mask(out) if mask is None else mask
    n = int(mask.sum()) * out.shape[-1]
    if n == 0:
        raise ValueError("the scan has no non-zero voxels")
    total = sum(float(out[..., t][mask].sum(dtype=np.float64)) for t in range(out.shape[-1]))
    mean = total / n
    sq = sum(float(((out[..., t][mask] - mean).astype(np.float64) ** 2).sum()) for t in range(out.shape[-1]))
    std = max((sq / n) ** 0.5, 1e-8)
    lo = np.inf
    for t in range(out.shape[-1]):
        frame = out[..., t]  # view
        frame -= mean
        frame /= std
        lo = min(lo, float(frame[mask].min()))
        frame[~mask] = 0.0
    fill = lo if background == "min" else 0.0
    if fill != 0.0:
        out[~mask] = fill
    return out, fill


def crop_or_pad(
    data: np.ndarray,  # (X, Y, Z, ...)
    shape: tuple[int, int, int],
    fill: float = 0.0,
    mask: np.ndarray | None = None,  # (X, Y, Z) foreground; cropping centres on its bounding box
) -> np.ndarray:
    """Crop or pad the three spatial axes to `shape`. Padding is split evenly (extra voxel at the end); cropping keeps
    the window centred on the foreground's bounding box (the volume's centre without a mask), inside the volume."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have three entries (X, Y, Z), got {shape}")
    starts = []
    for axis, (n, s) in enumerate(zip(data.shape[:3], shape)):
        if n >= s:
            centre = n / 2
            if mask is not None and mask.any():
                other = tuple(a for a in range(3) if a != axis)
                idx = np.flatnonzero(mask.any(axis=other))
                centre = (idx[0] + idx[-1] + 1) / 2
            starts.append(int(np.clip(round(centre - s / 2), 0, n - s)))
        else:
            starts.append(-((s - n) // 2))
    out = np.full(shape + data.shape[3:], fill, dtype=data.dtype)
    src, dst = [], []
    for n, s, start in zip(data.shape[:3], shape, starts):
        lo, hi = max(start, 0), min(start + s, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = data[tuple(src)]
    return out


def _same_grid(affine: np.ndarray, shape: tuple, target_affine: np.ndarray, target_shape: tuple | None) -> bool:
    if target_shape is not None and tuple(shape[:3]) != tuple(target_shape[:3]):
        return False
    return np.allclose(affine, target_affine, atol=1e-3)


def resample_bold(
    img: nib.Nifti1Image,  # 4D
    voxel_size: float | None = None,  # isotropic target voxel size (mm); keeps the field of view
    reference: str | Path | None = None,  # a NIfTI whose grid (affine, shape) is the target; wins over voxel_size
    interpolation: str = "linear",  # nilearn: "linear" | "continuous" | "nearest"
    fill_value: float = 0.0,  # value outside the source field of view
    mask: np.ndarray | None = None,  # (X, Y, Z) foreground on the source grid, resampled with nearest neighbour
) -> tuple[nib.Nifti1Image, np.ndarray | None]:
    """Resample to the encoder's grid when the affines differ (no-op otherwise). Returns (image, resampled mask);
    voxels outside the resampled mask are set to `fill_value`, so background stays exactly background."""
    from nilearn.image import resample_img, resample_to_img

    kwargs = dict(force_resample=True, copy_header=True)
    if reference is not None:
        ref = nib.load(str(reference))
        if _same_grid(img.affine, img.shape, ref.affine, ref.shape):
            return img, mask
        ref3d = nib.Nifti1Image(np.zeros(ref.shape[:3], dtype=np.uint8), ref.affine)
        out = resample_to_img(img, ref3d, interpolation=interpolation, fill_value=fill_value, **kwargs)
    elif voxel_size is not None:
        rot = img.affine[:3, :3]
        signs = np.where(np.diag(rot) < 0, -1.0, 1.0)  # keep the axis orientation (e.g. FSL's LAS MNI grids)
        target = np.diag(signs * float(voxel_size))
        if np.allclose(rot, target, atol=1e-3):
            return img, mask
        out = resample_img(img, target_affine=target, interpolation=interpolation, fill_value=fill_value, **kwargs)
    else:
        return img, mask
    if mask is None:
        return out, None
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), img.affine)
    new_mask = np.asarray(resample_to_img(mask_img, out, interpolation="nearest", **kwargs).dataobj) > 0
    data = np.asarray(out.dataobj, dtype=np.float32)
    data[~new_mask] = fill_value
    return nib.Nifti1Image(data, out.affine, out.header), new_mask
