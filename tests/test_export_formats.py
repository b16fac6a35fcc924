"""Export formats (parquet, npy, safetensors) hold the same embeddings and subjects, load in one line, resume per
file; embedding_map.png; progress bars only on a terminal."""

from __future__ import annotations

import io
import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from fusion.errors import FusionInputError
from fusion.export import export, progress_bar
from fusion.export_formats import EMBEDDINGS, read_split, safetensors_metadata, split_files
from fusion.export_map import draw_map, pick_color_by
from fusion.train import train
from genomics.checkpoints import sha256_file

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_cache, train_config):
    """A one-epoch tiny-demo run: its last.ckpt and its cohort's subjects."""
    tmp = tmp_path_factory.mktemp("formatsrun")
    _, objs = train(train_config(tmp, demo_cache, ["trainer.max_epochs=1", "test=false"]))
    return tmp / "run" / "checkpoints" / "last.ckpt", objs["datamodule"].cohort


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """The run exported in every format (the map only with parquet)."""
    ckpt, _ = trained
    out = tmp_path_factory.mktemp("exports")
    return {fmt: export(ckpt, out_dir=out / fmt, format=fmt, embedding_map=fmt == "parquet", progress=False)
            for fmt in ("parquet", "npy", "safetensors")}  # fmt: skip



def test_every_format_holds_the_same_subjects_and_embeddings(trained, exports):
    _, cohort = trained
    subjects = cohort.subjects.set_index("subject_id")
    for split in SPLITS:
        ref_emb, ref_meta = read_split(exports["parquet"][split].parent, split, "parquet")
        n = int((cohort.subjects["split"] == split).sum())
        assert (
            list(ref_meta.columns) == ["subject_id", "split", "trained_on", "age", "sex", "site"] and len(ref_meta) == n
        )
        assert (ref_meta["trained_on"] == (split == "train")).all() and set(ref_meta["split"]) == {split}
        assert np.allclose(ref_meta["age"], subjects.loc[ref_meta["subject_id"], "age"])
        assert list(ref_meta["sex"]) == list(subjects.loc[ref_meta["subject_id"], "sex"])
        for key in EMBEDDINGS:
            assert ref_emb[key].shape == (n, 512) and ref_emb[key].dtype == np.float32
        g, b, f = (ref_emb[k] for k in EMBEDDINGS)
        assert np.allclose(f, (g + b) / np.linalg.norm(g + b, axis=1, keepdims=True), atol=1e-5)
        for fmt in ("npy", "safetensors"):
            emb, meta = read_split(exports[fmt][split].parent, split, fmt)
            assert meta["subject_id"].tolist() == ref_meta["subject_id"].tolist()
            assert meta["trained_on"].dtype == bool and (meta["trained_on"] == ref_meta["trained_on"]).all()
            assert np.allclose(meta["age"], ref_meta["age"]) and list(meta["site"]) == list(ref_meta["site"])
            for key in EMBEDDINGS:  # deterministic evaluation transforms: the same numbers in every format
                assert np.array_equal(emb[key], ref_emb[key]), (fmt, split, key)


def test_each_format_loads_in_one_line(exports):
    df = pd.read_parquet(exports["parquet"]["test"])
    assert np.stack(df["fused"].to_numpy()).shape == (len(df), 512) and df["trained_on"].dtype == bool
    fused = np.load(exports["npy"]["test"].parent / "test_fused.npy")
    assert fused.shape == (len(df), 512) and fused.dtype == np.float32
    tensors = load_file(str(exports["safetensors"]["test"]))
    assert sorted(tensors) == ["brain", "fused", "genomics"] and tensors["fused"].shape == (len(df), 512)
    meta = safetensors_metadata(exports["safetensors"]["test"])
    assert json.loads(meta["subject_id"]) == df["subject_id"].tolist() and meta["split"] == "test"
    assert np.array_equal(tensors["fused"], fused) and np.array_equal(np.stack(df["fused"].to_numpy()), fused)


def test_parquet_loads_in_polars(exports):
    import polars as pl  # a dev dependency: this runs in CI
    df = pl.read_parquet(exports["parquet"]["val"])
    assert df.columns[:6] == ["subject_id", "split", "trained_on", "genomics", "brain", "fused"]
    assert np.stack(df["fused"].to_numpy()).shape == (df.height, 512)


def test_provenance_records_every_file_and_a_rerun_redoes_only_a_changed_one(trained, exports, export_calls):
    ckpt, _ = trained
    out = exports["npy"]["train"].parent
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["complete"] and prov["format"] == "npy" and "map" not in prov
    for split in SPLITS:
        names = split_files(split, "npy")
        assert prov["files"][split] == names and sorted(prov["splits"][split]["files"]) == sorted(names)
        assert all(sha256_file(out / n) == prov["splits"][split]["files"][n] for n in names)
    assert set(prov["cohort_sha256"]) >= {"manifest", "vcf", "reference", "regions", "atlas"}
    calls = export_calls  # the splits embedded from here on
    export(ckpt, out_dir=out, format="npy", embedding_map=False, progress=False)
    assert calls == []  # every split's files unchanged: nothing recomputed
    np.save(out / "val_brain.npy", np.zeros((1, 512), np.float32))  # changed behind the export's back
    export(ckpt, out_dir=out, format="npy", embedding_map=False, progress=False)
    assert len(calls) == 1 and np.load(out / "val_brain.npy").shape[0] == prov["splits"]["val"]["rows"]
    calls.clear()
    export(ckpt, out_dir=out, format="safetensors", embedding_map=False, progress=False)  # another format: redone
    assert len(calls) == 3 and (out / "test.safetensors").is_file()


def test_the_map_is_written_and_a_wrong_covariate_is_refused_before_compute(trained, exports, export_calls, tmp_path):
    png = exports["parquet"]["map"]
    assert png.name == "embedding_map.png"
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # three panels side by side
    prov = json.loads((png.parent / "provenance.json").read_text())
    assert prov["map"] == {"file": png.name, "sha256": sha256_file(png), "color_by": "age", "method": "pca"}
    calls = export_calls  # the splits embedded from here on
    with pytest.raises(FusionInputError, match=r"color_by='height'.*age \(continuous\), sex \(categorical\)"):
        export(trained[0], out_dir=tmp_path / "x", color_by="height")
    assert calls == []
    with pytest.raises(FusionInputError, match="format='hdf5'"):
        export(trained[0], out_dir=tmp_path / "x", format="hdf5")


def test_map_colours(tmp_path):
    assert pick_color_by(None, {"sex": "categorical", "age": "continuous"}) == "age"
    assert pick_color_by(None, {"sex": "categorical"}) == "sex" and pick_color_by(None, {}) is None
    rng = np.random.default_rng(0)
    n = 30
    emb = {k: rng.normal(size=(n, 16)).astype(np.float32) for k in EMBEDDINGS}
    meta = pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "split": ["train", "val", "test"] * 10,
                         "age": np.r_[rng.normal(60, 5, n - 2), [np.nan, np.nan]],
                         "site": ["a", "b", None] * 10})  # fmt: skip
    for color_by, kind in (("age", "continuous"), ("site", "categorical"), (None, None)):
        path = draw_map(emb, meta, color_by, kind, "pca", tmp_path / f"{color_by}.png")
        assert mpimg.imread(path).shape[2] in (3, 4)
    draw_map({k: v[:1] for k, v in emb.items()}, meta.iloc[:1], "age", "continuous", "pca", tmp_path / "one.png")


def test_umap_needs_umap_learn(trained, tmp_path):
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(FusionInputError, match="umap-learn"):
            export(trained[0], out_dir=tmp_path, method="umap")
    else:
        written = export(trained[0], out_dir=tmp_path, method="umap", progress=False)
        assert json.loads(written["provenance"].read_text())["map"]["method"] == "umap"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    assert progress_bar([range(3)], "export test", True).disable  # pytest's stderr is not a terminal
    tty = Terminal()
    monkeypatch.setattr("sys.stderr", tty)
    bar = progress_bar([range(3), range(2)], "export test", True)
    assert not bar.disable and list(bar) == [0, 1, 2, 0, 1]
    bar.close()
    assert "export test" in tty.getvalue() and "5/5" in tty.getvalue()
    assert progress_bar([range(3)], "export test", False).disable


def test_splits_all_is_one_file_of_every_subject(trained, exports, tmp_path):
    ckpt, cohort = trained
    written = export(ckpt, out_dir=tmp_path, splits="all", format="safetensors", embedding_map=False, progress=False)
    emb, meta = read_split(tmp_path, "all", "safetensors")
    assert list(written) == ["all", "provenance"] and len(meta) == len(cohort.subjects)
    split = cohort.subjects.set_index("subject_id").loc[meta["subject_id"], "split"].to_numpy()
    assert (meta["split"].to_numpy() == split).all() and (meta["trained_on"] == (meta["split"] == "train")).all()
    by_id = {}
    for s in SPLITS:
        e, m = read_split(exports["parquet"][s].parent, s, "parquet")
        by_id.update(zip(m["subject_id"], e["fused"]))
    assert np.allclose(emb["fused"], np.stack([by_id[s] for s in meta["subject_id"]]), atol=1e-6)
