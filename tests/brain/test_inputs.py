"""Other fMRI inputs for the parcel transforms: CIFTI-2 dense series with a .dlabel.nii atlas (nibabel), already
parcellated series (.npy / .tsv / .csv), and the input-kind rules."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brain.cifti import cifti_parcel_series, read_dlabel
from brain.errors import BrainInputError
from brain.parcellation import ParcelTimeSeries
from brain.scans import Run, Scan, input_kind, parcel_table_shape, read_parcel_table
from brain.transforms import BrainLMParcels


def write_cifti(out, n_time=30, t_r=0.72, n_left=40, n_right=30, n_parcels=5, seed=0, dlabel=True):
    """(dtseries path, dlabel path, (T, P) expected parcel means): two surface structures, labels 1..P + unassigned."""
    rng = np.random.default_rng(seed)
    left = nib.cifti2.BrainModelAxis.from_mask(np.ones(n_left, bool), name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_mask(np.ones(n_right, bool), name="CortexRight")
    models = left + right
    n = n_left + n_right
    keys = rng.integers(0, n_parcels + 1, n)
    keys[: n_parcels + 1] = np.arange(n_parcels + 1)  # every label present
    data = rng.normal(0, 1, (n_time, n)).astype(np.float32)
    series = nib.cifti2.SeriesAxis(start=0, step=t_r, size=n_time, unit="second")
    dts = out / "sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii"
    nib.save(nib.Cifti2Image(data, header=(series, models)), dts)
    table = {0: ("???", (0, 0, 0, 0))} | {k: (f"parcel{k}", (k / n_parcels, 0, 0, 1)) for k in range(1, n_parcels + 1)}
    labels = nib.cifti2.LabelAxis(["parcels"], [table])
    dl = out / "atlas.dlabel.nii"
    nib.save(nib.Cifti2Image(keys[None, :].astype(np.float32), header=(labels, models)), dl)
    want = np.stack([data[:, keys == k].mean(1) for k in range(1, n_parcels + 1)], axis=1)
    return str(dts), str(dl), want


def test_input_kinds():
    assert input_kind("a/b.nii.gz") == input_kind("b.NII") == "volume"
    assert input_kind("x.dtseries.nii") == "cifti"
    assert input_kind("x.tsv") == input_kind("x.csv") == input_kind("x.npy") == "parcels"
    with pytest.raises(BrainInputError, match="unknown fMRI input type"):
        input_kind("x.mgz")


def test_cifti_parcellation(tmp_path):
    dts, dl, want = write_cifti(tmp_path)
    atlas, labels = read_dlabel(dl)
    assert labels.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(cifti_parcel_series(dts, atlas, labels), want, rtol=1e-5, atol=1e-6)
    tf = ParcelTimeSeries(dl, window=10, n_eval_windows=2)
    x = tf(dts)
    assert tuple(x.shape) == (2, 10, 5)
    assert tf._t_r[dts] == pytest.approx(0.72)  # the series axis step
    (tmp_path / "other").mkdir()
    other, _, _ = write_cifti(tmp_path / "other", n_left=41)  # different grayordinates
    with pytest.raises(BrainInputError, match="grayordinates differ"):
        cifti_parcel_series(other, atlas, labels)
    with pytest.raises(BrainInputError, match="needs a .dlabel.nii atlas"):
        ParcelTimeSeries(nib.Nifti1Image(np.ones((2, 2, 2), np.int16), np.eye(4)))(dts)


@pytest.mark.parametrize("suffix", [".npy", ".tsv", ".csv"])
def test_parcellated_series_skip_the_masker(suffix, tmp_path, atlas_files):
    atlas, coords = atlas_files
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (50, 12)).astype(np.float32)
    path = tmp_path / f"sub-01_series{suffix}"
    if suffix == ".npy":
        np.save(path, data)
    else:
        sep = "\t" if suffix == ".tsv" else ","
        header = sep.join(f"p{k}" for k in range(1, 13))
        np.savetxt(path, data, delimiter=sep, header=header if suffix == ".tsv" else "", comments="", fmt="%.7g")
    assert parcel_table_shape(path) == (50, 12)
    np.testing.assert_allclose(read_parcel_table(path), data, rtol=1e-6)
    tf = ParcelTimeSeries(atlas, standardize=False)
    np.testing.assert_allclose(tf(path)[0].numpy(), data, rtol=1e-6)
    scan = Scan("sub-01", (Run(str(path), t_r=0.8, n_volumes=50),))
    lm = BrainLMParcels(atlas, coords, window=20, expected_t_r=0.735, scans={str(path): scan})
    assert tuple(lm(path).shape) == (4, 20, 12) and lm.review(scan).t_r == []


def test_bad_parcellated_series(tmp_path, atlas_files):
    atlas, _ = atlas_files
    np.save(tmp_path / "wide.npy", np.zeros((20, 13), np.float32))
    with pytest.raises(BrainInputError, match="wide.npy: 13 columns, but the atlas has 12 parcels"):
        ParcelTimeSeries(atlas)(tmp_path / "wide.npy")
    (tmp_path / "text.csv").write_text("1,2\n3,x\n")
    with pytest.raises(BrainInputError, match="text.csv: not a readable parcellated series"):
        read_parcel_table(tmp_path / "text.csv")
    np.save(tmp_path / "flat.npy", np.zeros(20, np.float32))
    with pytest.raises(BrainInputError, match="must be 2D"):
        parcel_table_shape(tmp_path / "flat.npy")
