"""A trained checkpoint embeds another cohort (`data.manifest=...`): every subject, trained_on, its own folder,
provenance of its files; a cohort that differs from the training one in regions or parcels is refused before compute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

import fusion.export as export_module
from fusion.export import export
from fusion.export_cohort import CohortMismatch
from fusion.export_formats import read_split
from fusion.train import train
from genomics.checkpoints import sha256_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_cache, train_config):
    """A one-epoch tiny-demo run: (last.ckpt, the run's data config, its training subjects)."""
    tmp = tmp_path_factory.mktemp("cohortrun")
    _, objs = train(train_config(tmp, demo_cache, ["trainer.max_epochs=1", "test=false"]))
    run = tmp / "run"
    data = OmegaConf.load(run / "config_resolved.yaml").data
    subjects = objs["datamodule"].cohort.subjects
    return run / "checkpoints" / "last.ckpt", data, set(subjects.loc[subjects["split"] == "train", "subject_id"])


def subset_manifest(data, path: Path, drop: int = 4) -> pd.DataFrame:
    """The demo manifest without its first `drop` subjects and without a split column (fMRI paths absolute)."""
    table = pd.read_csv(data.manifest, dtype=str)
    base = Path(data.manifest).parent
    table["fmri"] = [str(base / p) for p in table["fmri"]]
    table = table.iloc[drop:].drop(columns="split")
    table.to_csv(path, index=False)
    return table


def counting(monkeypatch) -> list:
    calls, real = [], export_module.embed_split
    monkeypatch.setattr(export_module, "embed_split", lambda model, loader: calls.append(1) or real(model, loader))
    return calls


def test_another_cohort_is_exported_whole_beside_the_training_export(trained, tmp_path):
    ckpt, data, train_ids = trained
    own = export(ckpt, format="parquet", embedding_map=False, progress=False)  # the training export: <run>/export
    before = {p.name: sha256_file(p) for p in own["train"].parent.iterdir()}
    table = subset_manifest(data, tmp_path / "replication.csv")
    written = export(ckpt, data={"manifest": tmp_path / "replication.csv"}, progress=False)
    out = written["all"].parent
    assert out.parent == ckpt.parent.parent and out.name.startswith("export_replication_") and out.name != "export"
    assert {p.name: sha256_file(p) for p in own["train"].parent.iterdir()} == before  # untouched
    emb, meta = read_split(out, "all", "parquet")
    assert sorted(meta["subject_id"]) == sorted(table["subject_id"])  # every subject, whatever its split
    assert set(meta["split"]) <= {"train", "val", "test"}
    assert meta["trained_on"].tolist() == [s in train_ids for s in meta["subject_id"]]
    assert 0 < meta["trained_on"].sum() < len(meta)
    ref = {s: read_split(own[s].parent, s, "parquet") for s in ("train", "val", "test")}
    same = pd.concat([r[1] for r in ref.values()], ignore_index=True).set_index("subject_id")
    fused = np.concatenate([r[0]["fused"] for r in ref.values()])
    rows = same.index.get_indexer(meta["subject_id"])
    assert np.allclose(emb["fused"], fused[rows], atol=1e-5)  # the same subject, the same model: the same embedding
    assert (same.loc[meta["subject_id"], "trained_on"].to_numpy() == meta["trained_on"].to_numpy()).all()
    prov = json.loads(written["provenance"].read_text())
    assert prov["cohort"]["trained_cohort"] is False and prov["split_sizes"] == {"all": len(table)}
    files = prov["cohort"]["files"]
    assert files["manifest"] == {"path": str((tmp_path / "replication.csv").resolve()),
                                 "sha256": sha256_file(tmp_path / "replication.csv")}  # fmt: skip
    assert files["vcf"]["path"] == str(Path(data.vcf).resolve()) and len(files["atlas"]["sha256"]) == 64
    assert (out / "embedding_map.png").is_file() and prov["map"]["color_by"] == "age"


def test_a_cohort_with_other_regions_or_parcels_is_refused_before_compute(trained, tmp_path, monkeypatch):
    ckpt, data, _ = trained
    subset_manifest(data, tmp_path / "other.csv")
    bed = pd.read_csv(data.regions, sep="\t", header=None)
    bed.iloc[2, 2] -= 10  # region03 ends 10 bp earlier
    bed.to_csv(tmp_path / "regions.bed", sep="\t", header=False, index=False)
    atlas = nib.load(data.atlas)
    labels = np.asarray(atlas.dataobj).copy()
    labels[labels == labels.max()] = 0  # one parcel fewer
    nib.save(nib.Nifti1Image(labels, atlas.affine, atlas.header), tmp_path / "atlas.nii.gz")
    calls = counting(monkeypatch)
    with pytest.raises(CohortMismatch, match=rf"data.regions={tmp_path}/regions.bed: .*region 3: region03") as err:
        export(ckpt, out_dir=tmp_path / "out", data={"manifest": tmp_path / "other.csv",
                                                     "regions": tmp_path / "regions.bed"})  # fmt: skip
    assert f"trained on 4 ({data.regions})" in str(err.value)
    n = int(labels.max())
    with pytest.raises(
        CohortMismatch, match=rf"data.atlas={tmp_path}/atlas.nii.gz: {n} parcels, .* trained on {n + 1}"
    ):
        export(ckpt, out_dir=tmp_path / "out", data={"manifest": tmp_path / "other.csv",
                                                     "atlas": tmp_path / "atlas.nii.gz"})  # fmt: skip
    assert calls == [] and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_command_line_takes_data_overrides(trained, tmp_path):
    ckpt, data, _ = trained
    subset_manifest(data, tmp_path / "rep.csv", drop=8)
    bed = pd.read_csv(data.regions, sep="\t", header=None).iloc[1:]
    bed.to_csv(tmp_path / "three.bed", sep="\t", header=False, index=False)
    base = [sys.executable, "-m", "fusion.export", f"ckpt_path={ckpt}", f"data.manifest={tmp_path / 'rep.csv'}"]
    ok = subprocess.run([*base, f"out_dir={tmp_path / 'out'}", "format=npy", "color_by=sex"], capture_output=True,
                        text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert np.load(tmp_path / "out" / "all_fused.npy").shape == (8, 512)
    exported = pd.read_csv(tmp_path / "out" / "all_subjects.csv", dtype={"subject_id": str})
    assert sorted(exported["subject_id"]) == sorted(pd.read_csv(tmp_path / "rep.csv", dtype=str)["subject_id"])
    assert exported["sex"].notna().all() and json.loads((tmp_path / "out" / "provenance.json").read_text())["map"][
        "color_by"] == "sex"  # fmt: skip
    bad = subprocess.run([*base, f"data.regions={tmp_path / 'three.bed'}"], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"data.regions={tmp_path / 'three.bed'}: 3 usable regions, the model was trained on 4" in bad.stderr


def test_a_dosage_model_refuses_genotypes_with_other_sites(tmp_path, demo_cache, train_config):
    import pysam

    _, objs = train(train_config(tmp_path, demo_cache, ["genomics=dosage", "trainer.max_epochs=1", "test=false"]))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = OmegaConf.load(tmp_path / "run" / "config_resolved.yaml").data
    sites = objs["datamodule"].genomics_transform.table.sites
    subset_manifest(data, tmp_path / "rep.csv")
    with pysam.VariantFile(data.vcf) as vcf, pysam.VariantFile(tmp_path / "less.vcf", "w", header=vcf.header) as out:
        for record in vcf:
            if (record.contig, record.pos) != (sites[1].contig, sites[1].pos):  # the second site in the regions
                out.write(record)
    pysam.tabix_index(str(tmp_path / "less.vcf"), preset="vcf", force=True)
    written = export(ckpt, data={"manifest": tmp_path / "rep.csv"}, embedding_map=False, progress=False)
    assert len(read_split(written["all"].parent, "all", "parquet")[1]) == 12  # the same genotypes: accepted
    with pytest.raises(CohortMismatch, match=rf"data.genotypes={tmp_path}/less.vcf.gz: {len(sites) - 1} genotype "
                       rf"sites .* has {len(sites)} .* site 2: .* here, {sites[1].name} in training"):  # fmt: skip
        export(ckpt, data={"manifest": tmp_path / "rep.csv", "vcf": tmp_path / "less.vcf.gz"}, progress=False)
