"""CIFTI-2 inputs (HCP grayordinates) through nibabel: a dense time series parcellated with a dense label file.

    atlas, labels = read_dlabel("Schaefer400.dlabel.nii")   # the image in memory, sorted non-zero label keys (P)
    series = cifti_parcel_series("rest.dtseries.nii", atlas, labels)   # (T, P) float32 parcel means
    cifti_t_r(img)                                          # seconds between time points (the series axis step)

A .dtseries.nii has axes (SeriesAxis: time, BrainModelAxis: grayordinates); a .dlabel.nii has (LabelAxis: one map,
BrainModelAxis). Both must list the same grayordinates (e.g. HCP's 91,282 fs_LR 32k + subcortical); the parcel signal
is the mean over the grayordinates carrying its key (NaN -> 0 first, as for volumes). Key 0 (`???`) is unassigned.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brain.errors import BrainInputError

SECONDS = {"SECOND": 1.0, "MILLISECOND": 1e-3, "MICROSECOND": 1e-6}


def _load(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFTI {what} not found: {path}")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types
        raise BrainInputError(f"{path}: not a readable CIFTI-2 file ({err})") from err
    if not isinstance(img, nib.Cifti2Image):
        raise BrainInputError(f"{path}: not a CIFTI-2 image (nibabel reads it as {type(img).__name__})")
    return img


def read_dlabel(path: str | Path) -> tuple[nib.Cifti2Image, np.ndarray]:
    """(dlabel image, sorted non-zero keys present in its first map): the parcels, P = len(keys)."""
    img = _load(path, "label file")
    axis = img.header.get_axis(0)
    if not isinstance(axis, nib.cifti2.LabelAxis) or not isinstance(img.header.get_axis(1), nib.cifti2.BrainModelAxis):
        raise BrainInputError(f"{path}: a .dlabel.nii needs (labels, grayordinates) axes, got {type(axis).__name__}")
    data = np.asarray(img.dataobj)[0]
    if not np.equal(np.round(data), data).all():
        raise BrainInputError(f"{path}: label keys must be integers")
    keys = np.unique(data[data != 0]).astype(int)
    if len(keys) == 0:
        raise BrainInputError(f"{path}: no labelled grayordinates")
    return img, keys


def cifti_t_r(img: nib.Cifti2Image, path="CIFTI series") -> float:
    axis = img.header.get_axis(0)
    if not isinstance(axis, nib.cifti2.SeriesAxis):
        raise BrainInputError(f"{path}: a .dtseries.nii needs a time (series) first axis, got {type(axis).__name__}")
    return float(axis.step) * SECONDS.get(str(axis.unit).upper(), 1.0)


def cifti_shape(path: str | Path) -> tuple[int, float, nib.cifti2.BrainModelAxis]:
    """(time points, TR in seconds, grayordinates axis) from the header of a .dtseries.nii."""
    img = _load(path, "dense series")
    t_r = cifti_t_r(img, path)
    models = img.header.get_axis(1)
    if not isinstance(models, nib.cifti2.BrainModelAxis):
        raise BrainInputError(f"{path}: a .dtseries.nii needs grayordinates (brain models) as its second axis")
    return int(img.shape[0]), t_r, models


def cifti_parcel_series(path: str | Path, atlas: nib.Cifti2Image, labels: np.ndarray) -> np.ndarray:
    """(T, P) float32 means over each label's grayordinates, P in `labels` order."""
    img = _load(path, "dense series")
    cifti_t_r(img, path)
    if img.header.get_axis(1) != atlas.header.get_axis(1):
        raise BrainInputError(
            f"{path}: its grayordinates differ from the atlas's ({img.shape[1]} vs {atlas.shape[1]}, or another "
            f"surface/structure set); use a .dlabel.nii made for the same grayordinate space (e.g. fs_LR 32k 91k)"
        )
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32))  # (T, N)
    keys = np.asarray(atlas.dataobj)[0].astype(int)  # (N,)
    pos = np.searchsorted(labels, keys)
    inside = (pos < len(labels)) & (labels[np.minimum(pos, len(labels) - 1)] == keys) & (keys != 0)
    onehot = np.zeros((data.shape[1], len(labels)), dtype=np.float32)  # (N, P)
    onehot[np.flatnonzero(inside), pos[inside]] = 1.0
    counts = onehot.sum(0)
    if (counts == 0).any():
        raise BrainInputError(f"{path}: atlas labels {labels[counts == 0][:5].tolist()} have no grayordinates")
    return (data @ onehot) / counts  # (T, P)
