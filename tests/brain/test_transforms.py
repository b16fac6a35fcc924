"""brain.transforms on generated NIfTI: shapes, windows, determinism, NaNs, mismatched grids, errors, pickling."""

import pickle

import numpy as np
import pytest
import torch

from brain.transforms import BrainLMParcels, VolumeWindows


def test_brainlm_parcels_windows_and_scaling(atlas_files, scan):
    atlas, coords = atlas_files
    tf = BrainLMParcels(atlas, coords, window=20, n_eval_windows=3)
    x = tf(scan)
    assert x.shape == (3, 20, 12) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, tf(scan))  # evaluation windows are deterministic
    whole = tf.series(scan)  # (40, 12): mean-centred, per-parcel median 0 after robust scaling
    assert whole.shape == (40, 12) and np.allclose(np.median(whole, axis=0), 0, atol=1e-5)
    a = tf(scan, train=True, rng=np.random.default_rng(5))
    b = tf(scan, train=True, rng=np.random.default_rng(5))
    assert a.shape == (1, 20, 12) and torch.equal(a, b)  # one random window, reproducible from the rng
    z = BrainLMParcels(atlas, coords, window=None, scaling="zscore")(scan)
    assert z.shape == (1, 40, 12) and torch.allclose(z.std(1, unbiased=False), torch.ones(12), atol=1e-4)


def test_brainlm_parcels_errors(atlas_files, scan, tmp_path, synth):
    atlas, coords = atlas_files
    with pytest.raises(ValueError, match=r"sub-01_bold.*40 frames.*50"):  # names the file and the window
        BrainLMParcels(atlas, coords, window=50)(scan)
    bad = tmp_path / "coords.csv"
    bad.write_text("label,x,y,z\n1,0,0,0\n2,1,1,1\n")
    with pytest.raises(ValueError, match="must match"):
        BrainLMParcels(atlas, bad, window=20)(scan)
    lazy = BrainLMParcels(tmp_path / "missing_atlas.nii.gz", window=20)  # opens nothing until called
    clone = pickle.loads(pickle.dumps(lazy))
    with pytest.raises(FileNotFoundError):
        clone(scan)


def test_brainlm_parcels_nan_voxels(atlas_files, tmp_path, synth):
    atlas, coords = atlas_files
    path = synth.make_scan(tmp_path / "nan.nii.gz", n_frames=24, nan_voxels=500)
    x = BrainLMParcels(atlas, coords, window=20, n_eval_windows=2)(path)
    assert x.shape == (2, 20, 12) and torch.isfinite(x).all()


def test_brainlm_parcels_atlas_on_another_grid(atlas_files, tmp_path, synth):
    atlas, coords = atlas_files  # 4 mm LAS atlas; the scan is 3 mm RAS: the atlas is resampled to the scan
    aff3 = np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])
    path = synth.make_scan(tmp_path / "sub-3mm.nii.gz", n_frames=24, shape=(61, 73, 61), affine=aff3)
    x = BrainLMParcels(atlas, coords, window=20, n_eval_windows=1)(path)
    assert x.shape == (1, 20, 12) and torch.isfinite(x).all() and (x.abs().sum(1) > 0).all()


def test_volume_windows_swift_and_brainmt_layouts(scan):
    sw = VolumeWindows(shape=(32, 32, 32), window=8, n_eval_windows=3, layout="swift", voxel_size=6.0)
    x = sw(scan)
    assert x.shape == (3, 1, 32, 32, 32, 8) and torch.isfinite(x).all()
    assert torch.equal(x, sw(scan))  # deterministic at evaluation
    bg = x[0, 0, 0, 0, 0, 0]
    assert bg == x.min()  # background (corner) = minimum of the normalised brain
    mt = VolumeWindows(shape=(48, 56, 48), window=16, n_eval_windows=2, layout="brainmt")
    y = mt(scan)
    assert y.shape == (2, 16, 1, 56, 48, 48)  # (W, T, 1, Y, X, Z)
    ref = VolumeWindows(shape=(48, 56, 48), window=16, n_eval_windows=2, layout="swift")(scan)  # (W, 1, X, Y, Z, T)
    assert torch.equal(y, ref[:, 0].permute(0, 4, 2, 1, 3).unsqueeze(2))
    t = mt(scan, train=True, rng=np.random.default_rng(0))
    assert t.shape == (1, 16, 1, 56, 48, 48)
    brain = y[y > y.min()]
    assert abs(float(brain.mean())) < 0.2  # z-normalised over the whole scan


def test_volume_windows_mismatched_affines_and_nans(tmp_path, synth):
    aff3 = np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])  # RAS 3 mm, other shape
    path = synth.make_scan(tmp_path / "sub-3mm.nii.gz", n_frames=12, shape=(61, 73, 61), affine=aff3, nan_voxels=300)
    tf = VolumeWindows(shape=(32, 32, 32), window=8, n_eval_windows=2, voxel_size=6.0)
    x = tf(path)
    assert x.shape == (2, 1, 32, 32, 32, 8) and torch.isfinite(x).all()
    same_grid = synth.make_scan(tmp_path / "sub-4mm.nii.gz", n_frames=12)
    y = VolumeWindows(shape=(32, 32, 32), window=8, n_eval_windows=2, voxel_size=6.0)(same_grid)
    frac = lambda v: float((v > v.min()).float().mean())  # noqa: E731
    assert abs(frac(x) - frac(y)) < 0.05  # the same brain fills the grid after resampling either scan


def test_volume_windows_errors(scan, tmp_path):
    with pytest.raises(ValueError, match=r"sub-01_bold.*40 frames.*50"):
        VolumeWindows(shape=(32, 32, 32), window=50)(scan)
    with pytest.raises(FileNotFoundError):
        VolumeWindows()(tmp_path / "nope.nii.gz")
    with pytest.raises(ValueError, match="layout"):
        VolumeWindows(layout="other")
    pickle.dumps(VolumeWindows())


def test_transforms_in_one_process_parcellate_a_scan_once(tmp_path, atlas_files, synth, monkeypatch):
    from brain import parcellation
    from brain.parcellation import ParcelTimeSeries

    monkeypatch.setattr(parcellation, "_SHARED", type(parcellation._SHARED)())
    path = synth.make_scan(tmp_path / "sub-01_bold.nii.gz", n_frames=40, seed=3)
    calls = []
    real = ParcelTimeSeries._raw
    monkeypatch.setattr(ParcelTimeSeries, "_raw", lambda self, run: calls.append(run.path) or real(self, run))
    first = ParcelTimeSeries(atlas_files[0], window=None).run_series(path)[0]  # (40, 12)
    again = BrainLMParcels(atlas_files[0], window=20)  # another transform (another run's), the same settings
    assert np.array_equal(again._parcels.run_series(path)[0], first) and len(calls) == 1
    assert np.array_equal(again.run_series(path)[0], again.run_series(path)[0])  # scaled once, then kept
    with pytest.raises(ValueError):
        first[0, 0] = 1.0  # shared arrays are read-only
    assert len(ParcelTimeSeries(atlas_files[0], detrend=True, confounds="none").run_series(path)) == 1
    assert len(calls) == 2  # other settings: computed again
    synth.make_scan(path, n_frames=40, seed=4)  # the file rewritten: its size/mtime change the key
    changed = ParcelTimeSeries(atlas_files[0]).run_series(path)[0]
    assert len(calls) == 3 and not np.array_equal(changed, first)
