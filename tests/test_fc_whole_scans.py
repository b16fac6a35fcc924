"""brain=fc over whole scans (`window: null`) whose subjects retain different numbers of volumes: batches pad the
shorter scans with NaN frames (brain.windows.collate_windows through fusion.app.datamodule.collate_paired) and the
connectivity is each subject's own, over all its retained volumes. Cohorts: the demo as fMRIPrep derivatives with
motion artefact and `confounds=scrubbing` (95-97 volumes kept of 100), and parcellated series of 79-100 frames (runs
of different lengths, as in multi-site cohorts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from brain.parcellation import ParcelTimeSeries
from fusion.app.cohort_source import demo_cohort
from fusion.app.datamodule import collate_paired
from fusion.demo.fmriprep import fmriprep_from_demo
from fusion.manifest import main as manifest_main
from fusion.train import train

COHORT_FILES = ("vcf", "reference", "regions", "atlas", "atlas_coords")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_cache, train_config):
    """The TINY_DEMO cohort's files (generated once per session, shared with the other training tests)."""
    return demo_cohort(train_config(tmp_path_factory.mktemp("compose"), demo_cache, []))


def overrides(files: dict, manifest, *extra: str) -> list[str]:
    return [f"data.manifest={manifest}", *[f"data.{k}={files[k]}" for k in COHORT_FILES], "trainer.max_epochs=1",
            *extra]  # fmt: skip


def test_collate_paired_pads_the_brain_inputs_and_default_collates_the_rest():
    items = [
        {"index": i, "subject_id": f"s{i}", "genomics": torch.full((2, 2, 5), i), "brain": torch.ones(1, n, 3),
         "covariates": {"age": 40.0 + i}}
        for i, n in enumerate((7, 9, 8))
    ]  # fmt: skip
    batch = collate_paired(items, brain=ParcelTimeSeries.collate)
    assert list(batch) == ["index", "subject_id", "genomics", "brain", "covariates"]
    assert batch["brain"].shape == (3, 1, 9, 3)
    assert torch.isnan(batch["brain"][0, :, 7:]).all() and not torch.isnan(batch["brain"][1]).any()
    assert batch["genomics"].shape == (3, 2, 2, 5) and batch["index"].tolist() == [0, 1, 2]
    assert batch["subject_id"] == ["s0", "s1", "s2"] and batch["covariates"]["age"].tolist() == [40.0, 41.0, 42.0]
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        collate_paired(items)  # without the transform's collate: the bug this fixes


def check_padded_batches_give_each_subjects_own_fc(objs) -> None:
    """A validation batch is NaN-padded to its longest scan; the brain encoder's features of every subject in it equal
    those of the subject's unpadded scan (all its retained volumes)."""
    dm, encoder = objs["datamodule"], objs["model"].net.brain.encoder
    batch = next(iter(dm.val_dataloader()))
    rows = dm.cohort.subjects.set_index("subject_id").loc[batch["subject_id"]]
    scans = [dm.brain_transform(f, train=False) for f in rows["fmri"]]  # (1, T_i, P) each
    lengths = [x.shape[1] for x in scans]
    assert len(set(lengths)) > 1, lengths  # the batch mixes scan lengths
    assert batch["brain"].shape == (len(scans), 1, max(lengths), scans[0].shape[2])
    feats = encoder(batch["brain"])
    for sid, x, z in zip(batch["subject_id"], scans, feats):
        assert torch.isnan(batch["brain"][batch["subject_id"].index(sid), :, x.shape[1] :]).all()
        assert torch.allclose(z, encoder(x[None])[0], atol=1e-5), sid


@pytest.mark.slow  # ~30 s on 2 shared cores (16 runs written, scrubbed, parcellated; 1 epoch)
@pytest.mark.parametrize("cache", ["false", "auto"])
def test_scrubbed_whole_scans_train_with_fc(tiny, tmp_path, demo_cache, train_config, cache):
    root = fmriprep_from_demo(tiny["manifest"].parent, tmp_path / "derivatives", runs=1, artefact=0.5)
    manifest = tmp_path / "manifest.csv"
    assert manifest_main([f"bids={root}", f"out={manifest}"]) == 0
    cfg = train_config(tmp_path, demo_cache, overrides(tiny, manifest, "brain.transform.confounds=scrubbing",
                                                       f"feature_cache.enabled={cache}"))  # fmt: skip
    assert cfg.brain.transform.window is None  # the default: the whole scan
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics
    dm = objs["datamodule"]
    kept = [sum(len(r) for r in dm.brain_transform.run_series(f)) for f in dm.cohort.subjects["fmri"]]
    assert max(kept) < 100 and len(set(kept)) > 1, kept  # scrubbing censors different volumes per subject
    if cache == "false":
        check_padded_batches_give_each_subjects_own_fc(objs)


@pytest.mark.parametrize("cache", ["false", "auto"])
def test_parcellated_series_of_different_lengths_train_with_fc(tiny, tmp_path, demo_cache, train_config, cache):
    demo = pd.read_csv(tiny["manifest"], dtype={"subject_id": str})
    parcels = ParcelTimeSeries(str(tiny["atlas"]), standardize=False)
    (tmp_path / "series").mkdir()
    lengths = {}
    for i, (sid, fmri) in enumerate(zip(demo["subject_id"], demo["fmri"])):  # runs of 79-100 volumes
        series = parcels.parcel_series(tiny["manifest"].parent / fmri)[: 100 - 3 * (i % 8)]
        np.save(tmp_path / "series" / f"{sid}.npy", series)
        lengths[sid] = len(series)
    demo["fmri"] = [f"series/{sid}.npy" for sid in demo["subject_id"]]
    demo["t_r"] = 2.0
    demo.to_csv(tmp_path / "manifest.csv", index=False)
    cfg = train_config(tmp_path, demo_cache, overrides(tiny, tmp_path / "manifest.csv", "brain=fc",
                                                       f"feature_cache.enabled={cache}"))  # fmt: skip
    metrics, objs = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "test/b2g/R@1" in metrics
    dm = objs["datamodule"]
    for sid, fmri in zip(dm.cohort.subjects["subject_id"], dm.cohort.subjects["fmri"]):
        assert dm.brain_transform(fmri, train=True).shape[1] == lengths[sid]  # nothing cropped
    if cache == "false":
        check_padded_batches_give_each_subjects_own_fc(objs)
    else:
        encoder = objs["model"].net.brain.encoder
        for fmri in dm.cohort.subjects["fmri"]:
            x = dm.brain_transform(fmri, train=False)
            assert torch.allclose(dm.features["brain"](fmri), encoder(x[None])[0], atol=1e-5), fmri
