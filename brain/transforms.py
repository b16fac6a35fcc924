"""Transforms from a 4D NIfTI to the fMRI encoders' native inputs (see fusion/encoders.py for the contract).

    BrainLMParcels(atlas, atlas_coords)(path, train=, rng=) -> (W, T, P)          BrainLM (both families)
        parcel means (brain.parcellation.ParcelTimeSeries: NIfTI through nilearn NiftiLabelsMasker, CIFTI, or an
        already parcellated series; confounds regressed and censored volumes dropped when `confounds` is set) ->
        robust scaling per parcel and run (brain.preprocess.robust_scale) -> windows of T frames from all runs. The
        encoder holds the parcels' xyz (same table). The TR is checked against `expected_t_r` (the published
        configs: BrainLM's UK Biobank TR, 0.735 s) by review(), or resampled to it (resample_t_r).
    VolumeWindows(layout="swift")(path, ...)   -> (W, 1, X, Y, Z, T)               SwiFT
    VolumeWindows(layout="brainmt")(path, ...) -> (W, T, 1, Y, X, Z)               BrainMT (upstream's axis order)
        z-normalisation over the foreground, background = min -> cut the frames of the windows -> resample to the
        encoder's voxel size when the affines differ -> crop/pad to the encoder's grid. The run's brain mask (the
        manifest's `mask`) is the foreground when given (fMRIPrep's BOLD is not skull-stripped); else the voxels that
        are non-zero in some frame. Volumes only: review() refuses CIFTI and parcellated inputs, naming the subject;
        a subject's first run is used.

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
from brain.scans import Scan, ScanReview, scan_for
from brain.windows import cut_run_windows, window_starts


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
        confounds: str = "none",  # none | simple | scrubbing | compcor (brain.confounds), before scaling
        detrend: bool = False,  # with confounds: regressed together (nilearn.signal.clean)
        low_pass: float | None = None,  # Hz, band-pass with the confounds (needs the TR)
        high_pass: float | None = None,  # Hz
        scans: dict[str, Scan] | None = None,  # {fmri path: Scan} (the cohort's): runs, confounds, masks, TRs
        expected_t_r: float | None = None,  # the checkpoint's training TR (s), checked by review(); None = any
        t_r_tolerance: float = 0.1,  # relative TR difference accepted
        resample_t_r: bool = False,  # resample runs at another TR to expected_t_r (cubic spline in time)
    ):
        if scaling not in ("robust", "robust_upstream", "zscore", "none"):
            raise ValueError(f"scaling must be robust | robust_upstream | zscore | none, got {scaling!r}")
        self.atlas, self.atlas_coords = atlas, atlas_coords
        self.window, self.n_eval_windows = window, n_eval_windows
        self.scaling, self.robust_stats = scaling, robust_stats
        self.confounds = confounds  # (the cohort report names the strategy)
        self._parcels = ParcelTimeSeries(
            atlas, labels, window=None, standardize=False, detrend=detrend, low_pass=low_pass, high_pass=high_pass,
            confounds=confounds, scans=scans, expected_t_r=expected_t_r, t_r_tolerance=t_r_tolerance,
            resample_t_r=resample_t_r,
        )  # fmt: skip
        self._stats = None
        self._checked = False
        self._scaled: dict[str, list[np.ndarray]] = {}  # path -> scaled runs (deterministic: scaled once)

    def __getstate__(self):  # dataloader workers scale for themselves
        return {**self.__dict__, "_scaled": {}}

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

    def review(self, scan: Scan) -> ScanReview:
        """Volumes kept after censoring, the TR check (ParcelTimeSeries.review)."""
        return self._parcels.review(scan)

    def _scale(self, x: np.ndarray) -> np.ndarray:
        if self.scaling.startswith("robust"):
            median, iqr = self._stats if self._stats is not None else (None, None)
            formula = "upstream" if self.scaling == "robust_upstream" else "correct"
            return robust_scale(x, median, iqr, formula=formula)
        if self.scaling == "zscore":
            std = x.std(axis=0, keepdims=True)
            return ((x - x.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)).astype(np.float32)
        return x

    def run_series(self, fmri_path: str | Path) -> list[np.ndarray]:
        """Each run as a scaled (T_r, P) float32 series."""
        self._check_labels()
        key = str(fmri_path)
        if key not in self._scaled:
            self._scaled[key] = [self._scale(x) for x in self._parcels.run_series(fmri_path)]
        return self._scaled[key]

    def series(self, fmri_path: str | Path) -> np.ndarray:
        """The (first run of the) scan as a scaled (T, P) float32 series."""
        return self.run_series(fmri_path)[0]

    def __call__(self, fmri_path: str | Path, *, train: bool = False, rng=None) -> torch.Tensor:
        runs = self.run_series(fmri_path)  # [(T_r, P)]
        return torch.from_numpy(
            cut_run_windows(
                runs, self.window, train=train, n_eval_windows=self.n_eval_windows, rng=rng, source=str(fmri_path)
            )
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
        scans: dict[str, Scan] | None = None,  # {fmri path: Scan} (the cohort's): kinds, masks
    ):
        if layout not in ("swift", "brainmt"):
            raise ValueError(f"layout must be 'swift' or 'brainmt', got {layout!r}")
        self.shape = tuple(int(s) for s in shape)
        self.window, self.n_eval_windows, self.layout = int(window), n_eval_windows, layout
        self.voxel_size, self.reference, self.interpolation = voxel_size, reference, interpolation
        self.background, self.normalize = background, normalize
        self.scans = scans

    def review(self, scan: Scan) -> ScanReview:
        """Refuses CIFTI and parcellated inputs (SwiFT and BrainMT read volumes), naming the subject."""
        review = ScanReview(usable=[scan.runs[0].n_volumes or 0], total=scan.runs[0].n_volumes or 0)
        for run in scan.runs:
            if run.kind != "volume":
                review.errors.append(
                    f"{run.path} is a {'CIFTI dense series' if run.kind == 'cifti' else 'parcellated series'}; "
                    f"{'SwiFT' if self.layout == 'swift' else 'BrainMT'} reads 4D NIfTI volumes: give volumes, or "
                    f"use a parcel encoder (brain=fc, brainlm_mae, ...)"
                )
        return review

    def volumes(self, fmri_path: str | Path, frames: np.ndarray, img: nib.Nifti1Image | None = None) -> np.ndarray:
        """Normalised, resampled and cropped volumes of the given frames: (X, Y, Z, len(frames)) float32."""
        img = img if img is not None else load_bold(fmri_path, min_frames=1)
        data = np.asarray(img.dataobj, dtype=np.float32)  # (X, Y, Z, T), NaN already 0
        mask_path = scan_for(self.scans, fmri_path).runs[0].mask
        if mask_path is not None:
            mask = np.asarray(nib.load(str(mask_path)).dataobj).reshape(img.shape[:3]) > 0  # the run's grid
            data[~mask] = 0.0
        else:
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
