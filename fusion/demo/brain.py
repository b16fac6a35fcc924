"""Synthetic brain side of the demo cohort: a Power-2011 sphere atlas in MNI space and per-subject 4D BOLD NIfTIs.

Atlas: nilearn's bundled Power 2011 coordinates (264 ROIs, no download) as spheres of `sphere_radius_mm` inside
nilearn's bundled MNI152 brain mask at 4 mm (voxels claimed by two spheres go to the nearer centre; ROIs with no voxel
in the mask are dropped and labels renumbered 1..P). Networks: k-means (scipy) of the coordinates, `n_networks`
clusters.
Signals (unit variance, AR(1) with `ar_coef`): independent network signals z_n and one shared signal u_k per factor;
    s_n = sqrt(1 - sum_{k in n} |rho_k|) z_n + sum_{k in n} g_kn u_k,   g = sqrt|rho_k| (sign(rho_k) on the 2nd network)
so corr(s_a, s_b) = rho_k for factor k's pair (a, b); parcel = s_net + parcel_noise * e; voxel (in a sphere) =
gain + amplitude * (parcel + voxel_noise * e); other brain voxels = gain + amplitude * background_signal * g (one
global AR(1) signal g shared by all of them, which keeps the files small); outside the mask 0. gain = baseline x a
per-subject factor in [0.9, 1.1]. Stored int16 (scale 1, values ~ baseline +- a few %), 4 mm, TR in the header,
gzipped; the grid is the MNI152 4 mm grid cropped to the brain (+1 voxel), so atlas and scans share one affine.
"""

from __future__ import annotations

import functools

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.signal import lfilter

MNI_RESOLUTION_MM = 4


@functools.lru_cache(maxsize=1)
def _mni_mask_and_power() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """nilearn's bundled MNI152 mask at 4 mm cropped to the brain + 1 voxel, its affine, the Power 2011 ROIs."""
    from nilearn.datasets import fetch_coords_power_2011, load_mni152_brain_mask

    mask_img = load_mni152_brain_mask(resolution=MNI_RESOLUTION_MM)
    inside = np.argwhere(np.asarray(mask_img.dataobj) > 0)
    lo, hi = np.maximum(inside.min(0) - 1, 0), inside.max(0) + 2  # crop (smaller files, same MNI space)
    mask_img = mask_img.slicer[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    mask = np.asarray(mask_img.dataobj) > 0
    mask.setflags(write=False)  # cached: shared by every call
    return mask, mask_img.affine, fetch_coords_power_2011().rois


def cluster_networks(points: np.ndarray, n_networks: int, seed: int, n_init: int = 10) -> np.ndarray:
    """(N,) k-means cluster index of each point (best of n_init k-means++ runs, scipy)."""
    from scipy.cluster.vq import kmeans2

    best = None
    for i in range(n_init):
        centres, assign = kmeans2(points, n_networks, minit="++", seed=np.random.default_rng([seed, i]))
        inertia = ((points - centres[assign]) ** 2).sum()
        if len(np.unique(assign)) == n_networks and (best is None or inertia < best[0]):
            best = (inertia, assign)
    if best is None:
        raise ValueError(f"could not form {n_networks} non-empty networks; lower n_networks")
    return best[1]


def make_atlas(sphere_radius_mm: float, n_networks: int, seed: int) -> tuple[nib.Nifti1Image, pd.DataFrame, np.ndarray]:
    """(label image int16 (X, Y, Z), coords table [label, x, y, z, name, network], brain mask bool (X, Y, Z))."""
    from scipy.spatial import cKDTree

    mask, affine, rois = _mni_mask_and_power()  # rois: columns roi, x, y, z (MNI mm)
    centres = rois[["x", "y", "z"]].to_numpy(float)  # (264, 3)
    ijk = np.argwhere(mask)  # (V, 3) brain voxels
    xyz = nib.affines.apply_affine(affine, ijk)  # (V, 3) mm
    dist, nearest = cKDTree(centres).query(xyz)  # (V,), (V,): nearest ROI centre of each voxel
    inside = dist <= sphere_radius_mm
    kept = np.unique(nearest[inside])  # ROIs with at least one brain voxel
    if len(kept) < n_networks:
        raise ValueError(f"only {len(kept)} atlas spheres inside the brain mask; raise sphere_radius_mm")
    new_label = np.zeros(len(centres), dtype=np.int16)
    new_label[kept] = np.arange(1, len(kept) + 1)
    labels = np.zeros(mask.shape, dtype=np.int16)
    sel = ijk[inside]
    labels[sel[:, 0], sel[:, 1], sel[:, 2]] = new_label[nearest[inside]]
    networks = cluster_networks(centres[kept], n_networks, seed)
    coords = pd.DataFrame(
        {
            "label": np.arange(1, len(kept) + 1),
            "x": centres[kept, 0],
            "y": centres[kept, 1],
            "z": centres[kept, 2],
            "name": [f"power_{int(r):03d}" for r in rois["roi"].to_numpy()[kept]],
            "network": [f"net{n + 1}" for n in networks],
        }
    )
    img = nib.Nifti1Image(labels, affine)
    img.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm")
    return img, coords, mask


def ar1(rng: np.random.Generator, n: int, length: int, coef: float, burn_in: int = 50) -> np.ndarray:
    """(n, length) unit-variance AR(1) series."""
    eps = rng.standard_normal((n, length + burn_in))
    return lfilter([np.sqrt(1 - coef**2)], [1.0, -coef], eps, axis=1)[:, burn_in:]


def parcel_series(
    rng: np.random.Generator,
    network_of_parcel: np.ndarray,  # (P,) network index of each parcel
    n_networks: int,
    pairs: np.ndarray,  # (K, 2) coupled networks
    rho: np.ndarray,  # (K,) this subject's coupling of each pair, |rho| < 0.5
    *,
    n_volumes: int,
    ar_coef: float,
    parcel_noise: float,
) -> np.ndarray:
    """(T, P) parcel signals of one subject."""
    z = ar1(rng, n_networks, n_volumes, ar_coef)  # (N, T)
    u = ar1(rng, len(pairs), n_volumes, ar_coef)  # (K, T)
    own = np.ones(n_networks)
    shared = np.zeros((n_networks, n_volumes))
    for k, (a, b) in enumerate(pairs):
        g = np.sqrt(abs(rho[k]))
        shared[a] += g * u[k]
        shared[b] += np.sign(rho[k]) * g * u[k]
        own[a] -= abs(rho[k])
        own[b] -= abs(rho[k])
    s = np.sqrt(np.clip(own, 0, None))[:, None] * z + shared  # (N, T)
    e = ar1(rng, len(network_of_parcel), n_volumes, ar_coef)  # (P, T)
    return (s[network_of_parcel] + parcel_noise * e).T


def bold_image(
    rng: np.random.Generator,
    labels: np.ndarray,  # (X, Y, Z) int atlas, 0 = not in a sphere
    mask: np.ndarray,  # (X, Y, Z) bool brain mask
    affine: np.ndarray,
    parcels: np.ndarray,  # (T, P)
    *,
    tr: float,
    ar_coef: float,
    baseline: float,
    amplitude: float,
    voxel_noise: float,
    background_signal: float,
) -> nib.Nifti1Image:
    """4D int16 image (X, Y, Z, T): parcel signal + voxel noise in the spheres, a weak global signal in the rest of
    the brain (the same in all those voxels, so the files compress well), 0 outside the brain."""
    n_t = parcels.shape[0]
    gain = baseline * rng.uniform(0.9, 1.1)  # scanner gain of this subject
    data = np.zeros((*mask.shape, n_t), dtype=np.int16, order="F")  # NIfTI order: x fastest, time slowest
    background = gain + amplitude * background_signal * ar1(rng, 1, n_t, ar_coef)[0]  # (T,)
    data[mask & (labels == 0)] = np.rint(background).astype(np.int16)
    sphere = labels > 0
    lab = labels[sphere]  # (V,) label of each sphere voxel
    values = parcels.T[lab - 1] + voxel_noise * rng.standard_normal((len(lab), n_t))  # (V, T)
    data[sphere] = np.clip(np.rint(gain + amplitude * values), 1, np.iinfo(np.int16).max).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_zooms((*np.abs(np.diag(affine)[:3]), tr))
    img.header.set_xyzt_units("mm", "sec")
    return img
