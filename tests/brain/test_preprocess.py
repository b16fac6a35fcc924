"""brain.preprocess: coordinates table, robust scaling, volume z-normalisation, crop/pad, resampling."""

import nibabel as nib
import numpy as np
import pytest

from brain.preprocess import (
    crop_or_pad,
    fit_robust_stats,
    foreground_mask,
    read_atlas_coords,
    resample_bold,
    robust_scale,
    znorm_volume,
)


def test_read_atlas_coords_csv_tsv_and_errors(tmp_path):
    (tmp_path / "c.tsv").write_text("Label\tX\tY\tZ\tname\n2\t1\t2\t3\tb\n1\t4\t5\t6\ta\n")
    c = read_atlas_coords(tmp_path / "c.tsv")
    assert c.labels.tolist() == [1, 2] and c.xyz.tolist() == [[4, 5, 6], [1, 2, 3]] and c.names == ["a", "b"]
    (tmp_path / "c.csv").write_text("label,x,y\n1,0,0\n")
    with pytest.raises(ValueError, match="missing column"):
        read_atlas_coords(tmp_path / "c.csv")
    with pytest.raises(FileNotFoundError):
        read_atlas_coords(tmp_path / "nope.csv")


def test_robust_scale_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (50, 4)).astype(np.float32)
    x[:, 3] = 0.0  # an empty parcel: IQR 0, left at 0
    out = robust_scale(x)
    c = x - x.mean(0)
    q25, q75 = np.percentile(c[:, 0], [25, 75])
    np.testing.assert_allclose(out[:, 0], (c[:, 0] - np.median(c[:, 0])) / (q75 - q25), rtol=1e-4, atol=1e-5)
    assert np.all(out[:, 3] == 0) and np.isfinite(out).all()
    med, iqr = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    np.testing.assert_allclose(robust_scale(x, med, iqr), (c - 0.5) / 2, atol=1e-5)
    np.testing.assert_allclose(robust_scale(x, med, iqr, formula="upstream"), c - 0.25, atol=1e-5)  # issue #19
    m, q = fit_robust_stats([x, x + 1])
    assert m.shape == q.shape == (4,)
    with pytest.raises(ValueError, match="parcels"):
        robust_scale(x, med[:3], iqr[:3])


def test_znorm_volume_background_min(synth):
    mask, SHAPE4 = synth.brain_mask(), synth.SHAPE4
    rng = np.random.default_rng(1)
    data = np.where(mask[..., None], rng.normal(500, 20, SHAPE4 + (6,)), 0).astype(np.float32)
    out, fill = znorm_volume(data)
    fg = out[mask]
    assert abs(fg.mean()) < 1e-4 and abs(fg.std() - 1) < 1e-3
    assert fill == pytest.approx(fg.min()) and np.all(out[~mask] == fill)
    out0, fill0 = znorm_volume(data, background="zero")
    assert fill0 == 0 and np.all(out0[~mask] == 0)
    assert np.array_equal(foreground_mask(data), mask)


def test_crop_or_pad_centres_on_brain():
    data = np.zeros((10, 20, 6, 2), np.float32)
    data[2:6, 12:18, 1:5] = 1  # brain off-centre along y
    mask = data[..., 0] > 0
    out = crop_or_pad(data, (12, 8, 6), fill=-1, mask=mask)
    assert out.shape == (12, 8, 6, 2)
    assert (out[..., 0] == 1).sum() == mask.sum()  # nothing of the brain cut
    assert out[0, 0, 0, 0] == -1 and out[1, 0, 0, 0] == 0  # x padded by 1 on each side with the fill value
    same = crop_or_pad(data, (10, 20, 6))
    assert np.array_equal(same, data)  # identity when the shape already matches
    with pytest.raises(ValueError):
        crop_or_pad(data, (10, 20))


def test_resample_bold_when_affines_differ(tmp_path, synth):
    rng = np.random.default_rng(2)
    mask, SHAPE4, MNI4 = synth.brain_mask(), synth.SHAPE4, synth.MNI4
    data = np.where(mask[..., None], rng.normal(1, 0.1, SHAPE4 + (3,)), 0).astype(np.float32)
    img = nib.Nifti1Image(data, MNI4)
    same, m = resample_bold(img, voxel_size=4.0, mask=mask)
    assert same is img and m is mask  # already on a 4 mm grid (LAS orientation kept): no resampling
    out, m6 = resample_bold(img, voxel_size=6.0, fill_value=-2.0, mask=mask)
    assert np.allclose(np.abs(np.diag(out.affine)[:3]), 6) and out.affine[0, 0] < 0
    vals = np.asarray(out.dataobj)
    assert vals.shape[:3] == m6.shape and np.all(vals[~m6] == -2.0) and abs(vals[m6].mean() - 1) < 0.05
    ref = tmp_path / "ref.nii.gz"  # a shifted 3 mm reference grid
    ref_aff = np.diag([3.0, 3.0, 3.0, 1.0])
    ref_aff[:3, 3] = [-80, -110, -60]
    nib.save(nib.Nifti1Image(np.zeros((50, 60, 50), np.uint8), ref_aff), str(ref))
    out, m3 = resample_bold(img, reference=ref, mask=mask)
    assert out.shape == (50, 60, 50, 3) and np.allclose(out.affine, ref_aff) and m3.any()
