"""Confound regression in the parcel transforms (brain.confounds, brain.parcellation): nilearn's masker as the oracle,
censored volumes never in a window, review() counts, TR checks and resampling, windows over several runs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from brain.confounds import load_confounds
from brain.errors import BrainInputError
from brain.parcellation import ParcelTimeSeries
from brain.scans import Run, Scan
from brain.transforms import BrainLMParcels, VolumeWindows
from brain.windows import cut_run_windows
from fusion.demo.fmriprep import add_artefact, confounds_table

N = 60  # volumes


@pytest.fixture(scope="module")
def run(tmp_path_factory, synth):
    """A 60-volume scan with motion artefact, its fMRIPrep-style confounds TSV (+ JSON), spikes at 20 and 40."""
    out = tmp_path_factory.mktemp("conf")
    path = synth.make_scan(out / "clean.nii.gz", n_frames=N, seed=3)
    rng = np.random.default_rng(0)
    table, sidecar = confounds_table(rng, N, 2.0, spikes=(20, 40))
    img = add_artefact(nib.load(path), table, rng, 1.0, spikes=(20, 40))
    bold = out / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    nib.save(img, bold)
    tsv = out / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    import json

    (out / tsv.name.replace(".tsv", ".json")).write_text(json.dumps(sidecar))
    return Run(str(bold), confounds=str(tsv), t_r=2.0, n_volumes=N)


def test_parcel_regression_equals_nilearn_masker_on_voxels(run, atlas_files):
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiLabelsMasker

    atlas, _ = atlas_files
    results = {}
    for strategy in ("simple", "scrubbing", "compcor"):
        scans = {run.path: Scan("s", (run,))}
        tf = ParcelTimeSeries(atlas, confounds=strategy, detrend=True, high_pass=0.01, scans=scans)
        got = tf.run_series(run.path)[0]  # (T kept, P)
        conf, mask = load_confounds_strategy(run.path, denoise_strategy=strategy)  # nilearn finds the TSV itself
        masker = NiftiLabelsMasker(atlas, strategy="mean", detrend=True, high_pass=0.01, t_r=2.0, standardize=None)
        want = masker.fit_transform(run.path, confounds=conf, sample_mask=mask)
        assert got.shape == want.shape == (N if mask is None else len(mask), 12)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
        results[strategy] = got
    import pandas as pd

    motion = pd.read_csv(run.confounds, sep="\t")["trans_x"].to_numpy()[1:]  # volume 0 is censored
    raw = ParcelTimeSeries(atlas, standardize=False).run_series(run.path)[0][1:]  # (59, 12)

    def corr(x):  # |correlation| of each parcel with trans_x
        return np.abs([np.corrcoef(x[:, p], motion)[0, 1] for p in range(12)])

    assert corr(raw).max() > 0.3 and corr(results["simple"]).max() < 0.05  # artefact gone


def test_scrubbing_censors_before_windows_and_review_counts(run, atlas_files):
    atlas, _ = atlas_files
    _, kept = load_confounds(run.confounds, "scrubbing", n_volumes=N)
    assert 0 not in kept and 20 not in kept and 40 not in kept  # non-steady-state volume 0 and both spikes
    scans = {run.path: Scan("sub-01", (run,))}
    tf = ParcelTimeSeries(atlas, window=10, n_eval_windows=3, confounds="scrubbing", scans=scans)
    assert tuple(tf(run.path).shape) == (3, 10, 12)
    review = tf.review(scans[run.path])
    assert review.errors == [] and review.total == N and review.lost == N - len(kept) and review.usable == [len(kept)]
    simple = ParcelTimeSeries(atlas, confounds="simple", scans=scans).review(scans[run.path])
    assert simple.lost == 1  # only the non-steady-state volume
    bare = Scan("sub-02", (Run(run.path, n_volumes=N),))
    assert "names no confounds table" in tf.review(bare).errors[0]
    with pytest.raises(BrainInputError, match="no confounds table"):
        ParcelTimeSeries(atlas, confounds="simple")(run.path)
    with pytest.raises(BrainInputError, match="confounds must be one of"):
        ParcelTimeSeries(atlas, confounds="aroma")


def test_bad_confounds_tables_name_the_file(run, tmp_path):
    import pandas as pd

    table = pd.read_csv(run.confounds, sep="\t")
    short = tmp_path / "short_desc-confounds_timeseries.tsv"
    table.iloc[:-5].to_csv(short, sep="\t", index=False)
    with pytest.raises(BrainInputError, match=r"short_desc.*55 rows, but the scan has 60"):
        load_confounds(short, "simple", n_volumes=N)
    nomotion = tmp_path / "nomotion.tsv"
    table.drop(columns=[c for c in table.columns if c.startswith("trans")]).to_csv(nomotion, sep="\t", index=False)
    with pytest.raises(BrainInputError, match="nomotion.tsv: cannot read confounds=simple"):
        load_confounds(nomotion, "simple")
    with pytest.raises(BrainInputError, match="JSON sidecar"):
        load_confounds(short, "compcor")
    assert load_confounds(nomotion, "none") == (None, None)


def test_brainlm_tr_check_and_resampling(run, atlas_files):
    atlas, coords = atlas_files
    scans = {run.path: Scan("sub-01", (run,))}
    tf = BrainLMParcels(atlas, coords, window=20, confounds="simple", expected_t_r=0.735, scans=scans)
    assert tf.confounds == "simple"
    assert "repetition time 2 s, but the encoder was trained at 0.735 s" in tf.review(scans[run.path]).t_r[0]
    same = BrainLMParcels(atlas, coords, window=20, expected_t_r=2.1, scans=scans)
    assert same.review(scans[run.path]).t_r == []  # within 10 %
    resampled = BrainLMParcels(atlas, coords, window=20, confounds="simple", expected_t_r=1.0, resample_t_r=True,
                               scans=scans)  # fmt: skip
    x = resampled.series(run.path)
    assert x.shape == (2 * (N - 2) + 1, 12)  # volumes 1..59 (volume 0 censored) at 1 s
    review = resampled.review(scans[run.path])
    assert review.t_r == [] and review.usable == [x.shape[0]]


def test_windows_over_runs_never_cross_a_boundary():
    runs = [np.full((30, 2), 1.0), np.full((12, 2), 2.0), np.full((5, 2), 3.0)]  # the last is shorter than the window
    ev = cut_run_windows(runs, 10, train=False, n_eval_windows=4, rng=None, source="s")
    assert ev.shape == (4, 10, 2)
    assert all(len(np.unique(w)) == 1 for w in ev) and {w[0, 0] for w in ev} == {1.0, 2.0}
    rng = np.random.default_rng(0)
    seen = {cut_run_windows(runs, 10, train=True, n_eval_windows=4, rng=rng, source="s")[0, 0, 0] for _ in range(200)}
    assert seen == {1.0, 2.0}
    assert cut_run_windows(runs, None, train=False, n_eval_windows=1, rng=None, source="s").shape == (1, 47, 2)
    with pytest.raises(BrainInputError, match="no run has 40 frames"):
        cut_run_windows(runs, 40, train=False, n_eval_windows=1, rng=None, source="s")


def test_all_runs_give_windows_and_volume_encoders_refuse_parcels(run, atlas_files, tmp_path):
    atlas, _ = atlas_files
    other = tmp_path / "table.npy"
    np.save(other, np.zeros((N, 12), dtype=np.float32))
    scan = Scan("sub-01", (run, Run(run.path, confounds=run.confounds, t_r=2.0, n_volumes=N)))
    tf = ParcelTimeSeries(atlas, window=20, n_eval_windows=5, confounds="simple", scans={run.path: scan})
    assert [x.shape[0] for x in tf.run_series(run.path)] == [N - 1, N - 1]
    assert tuple(tf(run.path).shape) == (5, 20, 12)
    vol = VolumeWindows(shape=(8, 8, 8), window=4, layout="brainmt")
    errors = vol.review(Scan("sub-07", (Run(str(other), n_volumes=N),))).errors
    assert "table.npy is a parcellated series; BrainMT reads 4D NIfTI volumes" in errors[0]


def test_run_brain_mask_restricts_parcels_and_is_the_volume_foreground(run, atlas_files, tmp_path):
    from nilearn.maskers import NiftiLabelsMasker

    atlas, _ = atlas_files
    img = nib.load(run.path)
    keep = np.ones(img.shape[:3], dtype=np.uint8)
    keep[22:24] = 0  # the slab |x| <= 2 mm: the four midline parcels lose their central voxels
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(keep, img.affine), mask)
    masked = Run(run.path, mask=str(mask), t_r=2.0, n_volumes=N)
    scans = {run.path: Scan("sub-01", (masked,))}
    got = ParcelTimeSeries(atlas, standardize=False, scans=scans).run_series(run.path)[0]
    want = NiftiLabelsMasker(atlas, mask_img=str(mask), strategy="mean", standardize=None).fit_transform(run.path)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(got, ParcelTimeSeries(atlas, standardize=False).run_series(run.path)[0])
    vol = VolumeWindows(shape=(45, 54, 45), window=4, n_eval_windows=1, scans=scans)
    x = vol(run.path)[0, 0]  # (X, Y, Z, T)
    outside = keep == 0
    assert np.ptp(x[outside]) == 0 and x[outside].min() == x.min()  # background = the minimum, everywhere outside
