"""Synthetic cohort pieces for the brain tests: MNI-like 4 mm BOLD scans, a sphere atlas and its coordinates table."""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

MNI4 = np.array([[-4.0, 0, 0, 90], [0, 4, 0, -126], [0, 0, 4, -72], [0, 0, 0, 1]])  # FSL MNI152 4 mm grid (LAS)
SHAPE4 = (45, 54, 45)
# a few parcel centres in MNI mm (x, y, z), spread in y so the ViT-MAE Y-ordering is non-trivial
CENTRES = np.array(
    [
        [-40, -60, 30],
        [40, -60, 30],
        [-30, 20, 40],
        [30, 20, 40],
        [0, -80, 10],
        [0, 40, 0],
        [-50, -20, 0],
        [50, -20, 0],
        [-20, -40, 60],
        [20, -40, 60],
        [0, 0, 20],
        [0, 55, 20],
    ],
    dtype=float,
)


def brain_mask(shape=SHAPE4, affine=MNI4) -> np.ndarray:
    """Ellipsoid 'brain' (MNI mm radii 70, 95, 75 around (0, -18, 8))."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = nib.affines.apply_affine(affine, ijk)
    r = ((xyz - [0, -18, 8]) / [70, 95, 75]) ** 2
    return (r.sum(1) <= 1).reshape(shape)


def make_scan(path, n_frames=40, shape=SHAPE4, affine=MNI4, seed=0, nan_voxels=0) -> str:
    rng = np.random.default_rng(seed)
    mask = brain_mask(shape, affine)
    t = np.arange(n_frames)
    data = np.zeros(shape + (n_frames,), dtype=np.float32)
    slow = np.sin(2 * np.pi * t / 17.0 + rng.uniform(0, 6))[None, :]
    idx = np.flatnonzero(mask)
    signal = 800 + 50 * slow * rng.uniform(0.5, 1.5, (len(idx), 1)) + rng.normal(0, 10, (len(idx), n_frames))
    data.reshape(-1, n_frames)[idx] = signal
    if nan_voxels:
        data.reshape(-1, n_frames)[idx[:nan_voxels]] = np.nan
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + (2.0,))
    nib.save(img, str(path))
    return str(path)


@pytest.fixture(scope="session")
def synth():
    """The helpers above (tests run with --import-mode=importlib, so they cannot import this module)."""
    return SimpleNamespace(MNI4=MNI4, SHAPE4=SHAPE4, CENTRES=CENTRES, brain_mask=brain_mask, make_scan=make_scan)


@pytest.fixture(scope="session")
def atlas_files(tmp_path_factory):
    """(atlas NIfTI path, coordinates CSV path): 12 spheres of radius 10 mm on the 4 mm grid, labels 1..12."""
    out = tmp_path_factory.mktemp("atlas")
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE4], indexing="ij"), -1).reshape(-1, 3)
    xyz = nib.affines.apply_affine(MNI4, ijk)
    labels = np.zeros(len(ijk), dtype=np.int16)
    for i, c in enumerate(CENTRES, start=1):
        labels[np.linalg.norm(xyz - c, axis=1) <= 10] = i
    nib.save(nib.Nifti1Image(labels.reshape(SHAPE4), MNI4), str(out / "atlas.nii.gz"))
    rows = ["label,x,y,z,name"] + [f"{i},{c[0]},{c[1]},{c[2]},p{i}" for i, c in enumerate(CENTRES, start=1)]
    (out / "atlas_coords.csv").write_text("\n".join(rows) + "\n")
    return str(out / "atlas.nii.gz"), str(out / "atlas_coords.csv")


@pytest.fixture(scope="session")
def scan(tmp_path_factory):
    """A 40-frame 4 mm scan."""
    return make_scan(tmp_path_factory.mktemp("scan") / "sub-01_bold.nii.gz", n_frames=40)
