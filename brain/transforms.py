"""Transforms from a 4D NIfTI to the fMRI encoders' native inputs (see fusion/encoders.py for the contract).

    BrainLMParcels(atlas, atlas_coords)(path, train=, rng=) -> (W, T, P)          BrainLM (both families)
        parcel means (brain.parcellation.ParcelTimeSeries, nilearn NiftiLabelsMasker) -> robust scaling per parcel
        (brain.preprocess.robust_scale) -> windows of T frames. The encoder holds the parcels' xyz (same table).
    VolumeWindows(layout="swift")(path, ...)   -> (W, 1, X, Y, Z, T)               SwiFT
    VolumeWindows(layout="brainmt")(path, ...) -> (W, T, 1, Y, X, Z)               BrainMT (upstream's axis order)
        z-normalisation over the foreground, background = min -> cut the frames of the windows -> resample to the
        encoder's voxel size when the affines differ -> crop/pad to the encoder's grid.

Windows (brain.windows.window_starts): training draws one random window (W = 1); evaluation takes n_eval_windows
evenly spaced windows that depend only on the scan length, so embeddings are reproducible. A scan shorter than the
window is an error naming the file. Transforms open nothing until first called and are picklable.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brain.errors import BrainInputError
from brain.parcellation import ParcelTimeSeries, load_bold
from brain.preprocess import (
    AtlasCoords,
    crop_or_pad,
    foreground_mask,
    read_atlas_coords,
    resample_bold,
    robust_scale,
    znorm_volume,
)
from brain.windows import cut_windows, window_starts


class BrainLMParcels:
    """4D NIfTI -> (W, T, P) robust-scaled parcel series for BrainLM (P = atlas labels in ascending order)."""

    def __init__(
        self,
        atlas: str | Path | nib.Nifti1Image,  # label image (1..P); resampled to each scan when grids differ
        atlas_coords: str | Path | AtlasCoords | None = None,  # label, x, y, z table; labels must equal the atlas's
        labels: np.ndarray | None = None,  # the atlas's sorted labels when already known (the cohort's)
        window: int | None = 200,  # frames per window (BrainLM: 200); None = the whole scan
        n_eval_windows: int = 4,  # evenly spaced windows averaged at evaluation
        scaling: str = "robust",  # "robust" | "robust_upstream" (issue #19 formula) | "zscore" | "none"
        robust_stats: str | Path | None = None,  # .npz with cohort `median`, `iqr` (P,); None = per-scan statistics
    ):
        if scaling not in ("robust", "robust_upstream", "zscore", "none"):
            raise ValueError(f"scaling must be robust | robust_upstream | zscore | none, got {scaling!r}")
        self.atlas, self.atlas_coords = atlas, atlas_coords
        self.window, self.n_eval_windows = window, n_eval_windows
        self.scaling, self.robust_stats = scaling, robust_stats
        self._parcels = ParcelTimeSeries(atlas, labels, window=None, standardize=False)
        self._stats = None
        self._checked = False

    def _check_labels(self) -> None:
        if self._checked:
            return
        if self.atlas_coords is not None:
            coords = read_atlas_coords(self.atlas_coords)
            labels = self._parcels.labels
            if not np.array_equal(coords.labels, labels):
                raise BrainInputError(
                    f"the atlas has labels {labels[:5].tolist()}... ({len(labels)}) but the coordinates table "
                    f"{coords} lists {coords.labels[:5].tolist()}... ({len(coords.labels)}); they must match"
                )
        if self.robust_stats is not None:
            stats = np.load(self.robust_stats)
            self._stats = (stats["median"], stats["iqr"])
        self._checked = True

    def series(self, fmri_path: str | Path) -> np.ndarray:
        """The whole scan as a scaled (T, P) float32 series."""
        self._check_labels()
        x = self._parcels.parcel_series(fmri_path)  # (T, P)
        if self.scaling.startswith("robust"):
            median, iqr = self._stats if self._stats is not None else (None, None)
            formula = "upstream" if self.scaling == "robust_upstream" else "correct"
            return robust_scale(x, median, iqr, formula=formula)
        if self.scaling == "zscore":
            std = x.std(axis=0, keepdims=True)
            return ((x - x.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)).astype(np.float32)
        return x

    def __call__(self, fmri_path: str | Path, *, train: bool = False, rng=None) -> torch.Tensor:
        x = self.series(fmri_path)  # (T, P)
        return torch.from_numpy(
            cut_windows(x, self.window, train=train, n_eval_windows=self.n_eval_windows, rng=rng, source=str(fmri_path))
        )  # (W, T, P)


class VolumeWindows:
    """4D NIfTI -> normalised volume windows, SwiFT's (W, 1, X, Y, Z, T) or BrainMT's (W, T, 1, Y, X, Z) layout."""

    def __init__(
        self,
        shape: tuple[int, int, int] = (96, 96, 96),  # encoder grid (X, Y, Z) in the NIfTI's axis order
        window: int = 20,  # frames per window (SwiFT 20, BrainMT 200)
        n_eval_windows: int = 4,
        layout: str = "swift",  # "swift" | "brainmt"
        voxel_size: float | None = None,  # resample to this isotropic size (mm) when the scan's differs; None = keep
        reference: str | Path | None = None,  # or resample to this NIfTI's grid (wins over voxel_size)
        interpolation: str = "linear",  # nilearn interpolation for the BOLD data (the mask uses nearest)
        background: str = "min",  # background value after z-normalisation: "min" (upstream) | "zero"
        normalize: bool = True,  # per-scan z-normalisation over the foreground
    ):
        if layout not in ("swift", "brainmt"):
            raise ValueError(f"layout must be 'swift' or 'brainmt', got {layout!r}")
        self.shape = tuple(int(s) for s in shape)
        self.window, self.n_eval_windows, self.layout = int(window), n_eval_windows, layout
        self.voxel_size, self.reference, self.interpolation = voxel_size, reference, interpolation
        self.background, self.normalize = background, normalize

    def volumes(self, fmri_path: str | Path, frames: np.ndarray, img: nib.Nifti1Image | None = None) -> np.ndarray:
        """Normalised, resampled and cropped volumes of the given frames: (X, Y, Z, len(frames)) float32."""
        img = img if img is not None else load_bold(fmri_path, min_frames=1)
        data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z, T), NaN already 0
        mask = foreground_mask(data)
        if not mask.any():
            raise BrainInputError(f"{fmri_path}: every voxel is 0 (or NaN); nothing to normalise")
        fill = 0.0
        if self.normalize:
            data, fill = znorm_volume(data, mask, background=self.background)
        data = np.ascontiguousarray(data[..., frames])
        sub = nib.Nifti1Image(data, img.affine)
        sub, mask = resample_bold(
            sub, self.voxel_size, self.reference, interpolation=self.interpolation, fill_value=fill, mask=mask
        )
        data = np.asarray(sub.dataobj, dtype=np.float32)
        return crop_or_pad(data, self.shape, fill=fill, mask=mask)

    def __call__(self, fmri_path: str | Path, *, train: bool = False, rng=None) -> torch.Tensor:
        img = load_bold(fmri_path, min_frames=1)  # the header once; data read below, only the frames needed
        starts = window_starts(
            img.shape[3], self.window, train=train, n_eval_windows=self.n_eval_windows, rng=rng, source=str(fmri_path)
        )
        frames = np.unique(np.concatenate([np.arange(s, s + self.window) for s in starts]))
        vols = self.volumes(fmri_path, frames, img)  # (X, Y, Z, F)
        pos = {f: i for i, f in enumerate(frames.tolist())}
        wins = np.stack([vols[..., [pos[f] for f in range(s, s + self.window)]] for s in starts])  # (W, X, Y, Z, T)
        x = torch.from_numpy(wins)
        if self.layout == "swift":
            return x.unsqueeze(1)  # (W, 1, X, Y, Z, T)
        return x.permute(0, 4, 2, 1, 3).unsqueeze(2).contiguous()  # (W, T, 1, Y, X, Z), as BrainMT's dataset
