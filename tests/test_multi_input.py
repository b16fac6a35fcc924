"""Several genetic inputs in one genomics tower (fusion.multi_input): the masked combination against a direct
computation, missing inputs, the config syntax beside genomics= sweeps, and a demo run with three inputs."""

from __future__ import annotations

import gzip
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
import torch

from fusion.heads import ProjectionHead
from fusion.multi_input import (
    MAIN,
    ColumnFeatures,
    ManifestColumns,
    MissingInput,
    MultiInputEncoder,
    MultiInputHead,
    MultiInputTransform,
)
from fusion.train import train

HEAD = partial(ProjectionHead, hidden_dim=None, out_dim=8, dropout=0.0)


def table():
    return pd.DataFrame(
        {
            "subject_id": ["s0", "s1", "s2", "s3"],
            "pc1": [0.1, 0.2, 0.3, 0.4],
            "prs": [1.0, np.nan, 3.0, np.nan],
            "site": ["a", "b", "a", "b"],
        }
    )


def test_transform_masks_a_missing_input_and_never_the_main_one():
    transform = MultiInputTransform(
        {MAIN: ManifestColumns(["pc1"], table()), "prs": ManifestColumns("prs", table())}, ["s0", "s1", "s2", "s3"]
    )
    item = transform("s1")
    assert item["mask"].tolist() == [True, False]
    assert torch.equal(item["inputs"]["prs"], torch.zeros(1))  # zeros shaped like a subject's that has it
    assert transform("s2")["mask"].tolist() == [True, True] and transform("s2")["inputs"]["prs"].item() == 3.0
    with pytest.raises(MissingInput, match="s9"):
        transform("s9")  # the main input is required
    with pytest.raises(ValueError, match="not numeric"):
        ManifestColumns(["site"], table())
    with pytest.raises(ValueError, match="not manifest columns"):
        ManifestColumns(["height"], table())


def test_masked_mean_of_the_inputs_heads_equals_a_direct_computation():
    torch.manual_seed(0)
    encoder = MultiInputEncoder({MAIN: ColumnFeatures(3), "prs": ColumnFeatures(2)})
    head = MultiInputHead(encoder.output_dim, {MAIN: HEAD, "prs": HEAD}, encoder.widths)
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    mask = torch.tensor([[True, True], [True, False], [True, True], [True, False]])
    features = encoder({"inputs": {MAIN: a, "prs": b}, "mask": mask})  # (4, 3 + 2 + 2)
    assert features.shape == (4, 7) and torch.equal(features[1, 3:5], torch.zeros(2))  # missing -> zeros
    out = head.eval()(features)
    h_main, h_prs = head.heads[MAIN], head.heads["prs"]
    expected = torch.where(mask[:, 1:], (h_main(a) + h_prs(b)) / 2, h_main(a))
    torch.testing.assert_close(out, expected)
    # a subject lacking the input sends no gradient to that input's head
    head.train()
    head(features)[[1, 3]].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in h_prs.parameters())
    assert any(p.grad.abs().sum() > 0 for p in h_main.parameters())


def test_extra_inputs_sit_beside_the_genomics_choice(tmp_path, demo_cache, train_config):
    extra = ["+genomics@genomics_inputs.dosage=dosage", "+genomics@genomics_inputs.prs=columns"]
    cfg = train_config(tmp_path, demo_cache, ["genomics=dosage", *extra, "genomics_inputs.prs.transform.columns=[a]"])
    assert cfg.genomics.encoder._target_ == "genomics.models.DosageEncoder"  # the main input, as genomics= chose
    assert list(cfg.genomics_inputs) == ["dosage", "prs"]
    assert cfg.genomics_inputs.prs.head.out_dim == cfg.model.embed_dim  # every input's head in the shared space
    assert dict(train_config(tmp_path, demo_cache, []).genomics_inputs) == {}  # none by default


def test_demo_trains_on_three_inputs_with_a_partly_missing_one(tmp_path, demo_cache, train_config):
    from fusion.app.cohort_source import resolve_cohort

    overrides = ["+genomics@genomics_inputs.dosage=dosage", "+genomics@genomics_inputs.prs=columns"]
    overrides += ["genomics_inputs.prs.transform.columns=[prs]", "trainer.max_epochs=2"]
    cfg = train_config(tmp_path, demo_cache, overrides)
    resolve_cohort(cfg)  # the tiny demo cohort's files; then a manifest with a polygenic score, empty for a third
    manifest = pd.read_csv(cfg.data.manifest)
    rng = np.random.default_rng(0)
    manifest["prs"] = np.where(np.arange(len(manifest)) % 3 == 0, np.nan, rng.normal(size=len(manifest)))
    path = tmp_path / "manifest_prs.csv"  # fmri paths relative to the manifest's folder: made absolute here
    manifest["fmri"] = [str((Path(cfg.data.manifest).parent / f).resolve()) for f in manifest["fmri"]]
    manifest.to_csv(path, index=False)
    cfg.data.manifest = str(path)
    metrics, objs = train(cfg)
    tower = objs["model"].net.genomics
    assert isinstance(tower.encoder, MultiInputEncoder) and list(tower.encoder.widths) == [MAIN, "dosage", "prs"]
    assert tower.precomputed  # no trainable encoder weight: the frozen-feature cache holds all three inputs
    assert np.isfinite(metrics["test/g2b/R@1"]) and metrics["test/g2b/R@1"] >= 0
    transform = objs["datamodule"].genomics_transform
    masks = torch.stack([transform(s)["mask"] for s in manifest["subject_id"].astype(str)])  # (N, 3)
    assert masks[:, :2].all() and masks[:, 2].tolist() == manifest["prs"].notna().tolist()
    assert "test/probe/sex/genomics_encoder/balanced_accuracy" in metrics  # raw features of all inputs probed


def drop_samples(vcf: Path, out: Path, drop: set[str]) -> Path:
    """The VCF without the genotype columns of `drop` (bgzipped and indexed)."""
    keep = None
    with gzip.open(vcf, "rt") as src, open(out, "w") as dst:
        for line in src:
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#CHROM"):
                keep = [i for i, name in enumerate(fields) if i < 9 or name not in drop]
            if line.startswith("##"):
                dst.write(line)
            else:
                dst.write("\t".join(fields[i] for i in keep) + "\n")
    return Path(pysam.tabix_index(str(out), preset="vcf", force=True))


def test_an_input_from_its_own_genotypes_lacking_subjects_trains_and_exports(tmp_path, demo_cache, train_config):
    from fusion.app.cohort_source import resolve_cohort
    from fusion.export import export
    from fusion.export_cohort import CohortMismatch
    from fusion.export_formats import read_split

    cfg = train_config(tmp_path, demo_cache, ["trainer.max_epochs=1", "test=false"])
    resolve_cohort(cfg)
    manifest = pd.read_csv(cfg.data.manifest, dtype=str)
    train_ids = manifest.loc[manifest["split"] == "train", "subject_id"].tolist()
    lacking = set(train_ids[:3]) | set(manifest.loc[manifest["split"] == "test", "subject_id"][:1])
    genotypes = drop_samples(Path(cfg.data.vcf), tmp_path / "array.vcf", lacking)  # e.g. a genotyping array's file
    overrides = ["+genomics@genomics_inputs.array=dosage", f"genomics_inputs.array.transform.genotypes={genotypes}"]
    cfg = train_config(tmp_path, demo_cache, ["trainer.max_epochs=1", "test=false", *overrides])
    _, objs = train(cfg)
    transform = objs["datamodule"].genomics_transform
    masks = {s: transform(s)["mask"].tolist() for s in manifest["subject_id"]}
    assert {s for s, m in masks.items() if not m[1]} == lacking and all(m[0] for m in masks.values())
    array = transform.transforms["array"]
    present = [s for s in train_ids if s not in lacking]  # the training means come from the subjects it has
    means = np.nanmean(array.table.dosages[:, array.table.columns(present)], axis=1)
    encoder = objs["model"].net.genomics.encoder.encoders["array"]
    assert np.allclose(encoder.means.numpy(), np.nan_to_num(means))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    written = export(ckpt, data={"manifest": cfg.data.manifest}, embedding_map=False, progress=False)
    emb, meta = read_split(written["all"].parent, "all", "parquet")
    assert len(meta) == len(manifest) and np.isfinite(emb["fused"]).all()  # lacking subjects embedded from the rest
    from fusion.app.build import Inputs, build_inputs
    from fusion.export_cohort import check_compatible

    first = array.table.sites[0]  # the array file without its first site in the regions: another encoder width
    with gzip.open(genotypes, "rt") as src, open(tmp_path / "less.vcf", "w") as dst:
        dst.writelines(line for line in src if line.startswith("#") or line.split("\t")[1] != str(first.pos))
    less = pysam.tabix_index(str(tmp_path / "less.vcf"), preset="vcf", force=True)
    cfg.genomics_inputs.array.transform.genotypes = less
    data = objs["datamodule"]
    trained = Inputs(data.cohort, None, data.genomics_transform, data.brain_transform)
    n = len(array.table.sites)
    with pytest.raises(CohortMismatch, match=rf"genomics_inputs.array.transform.genotypes={less}: {n - 1} genotype"):
        check_compatible(trained, build_inputs(cfg))
