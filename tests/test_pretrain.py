"""Caduceus MLM pretraining as a fusion.train experiment, and the tiny model's first-use pretraining (the same code,
content-addressed and cached, written atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from fusion.app import pretrain
from fusion.app.build import instantiate_with
from fusion.train import train
from genomics.caduceus import Caduceus, CaduceusForMaskedLM
from genomics.checkpoints import sha256_file

# a small model on short windows: the settings of both paths (model/data nodes), as overrides of their keys
SMALL = {
    "data.steps": 40,
    "data.seq_len": 32,
    "data.batch_size": 4,
    "model.config.d_model": 16,
    "model.config.n_layer": 1,
    "model.optimizer.lr": 2e-2,
}


def overrides(prefix: str = "", **changes) -> list[str]:
    """SMALL updated with changes ('__' for '.') as Hydra overrides, under `prefix` (e.g. genomics.pretrain.)."""
    items = SMALL | {k.replace("__", "."): v for k, v in changes.items()}
    return [f"{prefix}{k}={v}" for k, v in items.items()] + [f"+{prefix}model.config.ssm_backend=torch"]


def write_fasta(path: Path, unit: str = "ACGGTCAT") -> Path:
    path.write_text(">chr1\n" + unit * 40 + "\n>chr2\n" + "NNNN" + unit * 10 + "\n")  # periodic: learnable
    return path


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    return write_fasta(tmp_path_factory.mktemp("ref") / "ref.fa")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, fasta, train_config):
    """python -m fusion.train experiment=pretrain_caduceus data.reference=ref.fa (small settings)."""
    tmp = tmp_path_factory.mktemp("experiment")
    args = ["experiment=pretrain_caduceus", f"data.reference={fasta}", *overrides()]
    cfg = train_config(tmp, tmp / "cache", args, tiny=False)
    metrics, objs = train(cfg)
    return tmp / "run", metrics, objs


def tiny_cfg(train_config, tmp_path: Path, cache: Path, fasta: Path, **changes):
    """A genomics=caduceus_tiny run config whose cohort reference is `fasta` (as resolve_cohort would leave it)."""
    args = ["genomics=caduceus_tiny", "genomics/pooling=mean", *overrides("genomics.pretrain.", **changes)]  # ids in
    cfg = train_config(tmp_path, cache, args, tiny=False)
    with open_dict(cfg):
        cfg.data.reference = str(fasta)
    return cfg


def test_experiment_writes_the_published_layout_and_learns(experiment, fasta):
    run, metrics, objs = experiment
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "pretrain.json"} <= set(os.listdir(run))
    keys = load_file(run / "model.safetensors").keys()
    assert "caduceus.backbone.embeddings.word_embeddings.embedding.weight" in keys and "lm_head.complement_map" in keys
    backbone = Caduceus.from_pretrained(run)  # the run folder is a checkpoint folder (genomics.encoder.checkpoint)
    assert backbone.config.d_model == 16 and backbone.config.rcps
    assert CaduceusForMaskedLM.from_pretrained(run).config.n_layer == 1
    record = json.loads((run / "pretrain.json").read_text())
    losses = record["losses"]
    assert len(losses) == 40 == objs["trainer"].global_step
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])  # the loss fell
    assert record["eval_accuracy"] > 0.5 and metrics["eval/accuracy"] == record["eval_accuracy"]  # chance: 0.25
    assert record["inputs"]["fasta_sha256"] == sha256_file(fasta) and record["inputs"]["data"]["steps"] == 40
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # for ckpt_path= resumes: plain types
    assert last["hyper_parameters"]["config"]["d_model"] == 16 and last["global_step"] == 40


def test_first_use_pretraining_is_the_experiment_and_is_cached(tmp_path, fasta, experiment, train_config):
    cache = tmp_path / "cache"
    cfg = tiny_cfg(train_config, tmp_path, cache, fasta)
    rng = torch.get_rng_state()
    pretrain.resolve_pretrained_encoder(cfg)
    assert torch.equal(torch.get_rng_state(), rng)  # the alignment run's random streams are untouched
    folder = Path(cfg.genomics.encoder.checkpoint)
    assert folder.parent == cache / "caduceus_mlm" and os.listdir(folder.parent) == [folder.name]
    run = experiment[0]
    ours, theirs = json.loads((folder / "pretrain.json").read_text()), json.loads((run / "pretrain.json").read_text())
    assert ours["inputs"] == theirs["inputs"]  # the same settings, read from the same two config files
    a, b = load_file(folder / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # and the same code: the same weights
    encoder = instantiate_with(cfg.genomics.encoder, {"n_regions": 2})
    assert encoder.output_dim == 2 * 16 and encoder.embedder.rcps

    stamp = (folder / "pretrain.json").stat().st_mtime_ns
    again = tiny_cfg(train_config, tmp_path, cache, fasta)
    pretrain.resolve_pretrained_encoder(again)
    assert again.genomics.encoder.checkpoint == str(folder) and (folder / "pretrain.json").stat().st_mtime_ns == stamp
    other = tiny_cfg(train_config, tmp_path, cache, fasta, data__steps=2)  # other settings: another folder
    pretrain.resolve_pretrained_encoder(other)
    changed = write_fasta(tmp_path / "changed.fa", unit="ACGGTCAA")  # other FASTA content: another folder
    edited = tiny_cfg(train_config, tmp_path, cache, changed, data__steps=2)
    pretrain.resolve_pretrained_encoder(edited)
    folders = {cfg.genomics.encoder.checkpoint, other.genomics.encoder.checkpoint, edited.genomics.encoder.checkpoint}
    assert len(folders) == 3 and sorted(os.listdir(cache / "caduceus_mlm")) == sorted(Path(f).name for f in folders)
    given = tiny_cfg(train_config, tmp_path, cache, Path("/nonexistent.fa"))
    with open_dict(given):
        given.genomics.encoder.checkpoint = str(folder)
    pretrain.resolve_pretrained_encoder(given)  # a checkpoint is given: no pretraining, the FASTA is not read
    assert given.genomics.encoder.checkpoint == str(folder)


def test_first_use_is_atomic_and_survives_a_race(tmp_path, fasta, monkeypatch, train_config):
    cfg = tiny_cfg(train_config, tmp_path, tmp_path / "cache", fasta, data__steps=2)
    node = cfg.genomics.pretrain
    with open_dict(cfg):
        node.data.reference = str(fasta)

    def checkpoint():
        return pretrain.pretrained_checkpoint(node.model, node.data, cfg.paths.cache_dir, cfg.trainer)

    def crash(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:  # a crash leaves nothing behind: no folder, no temporary folder
        m.setattr(pretrain.MaskedLMModule, "training_step", crash)
        with pytest.raises(RuntimeError, match="killed"):
            checkpoint()
    assert os.listdir(tmp_path / "cache" / "caduceus_mlm") == []

    finish, raced = pretrain.PretrainRun.finish, []

    def finish_after_a_rival(self, trainer, out_dir):  # another process renames its folder into place meanwhile
        if not raced:
            raced.append(None)
            raced[0] = checkpoint()
        return finish(self, trainer, out_dir)

    monkeypatch.setattr(pretrain.PretrainRun, "finish", finish_after_a_rival)
    out = checkpoint()
    assert out == raced[0] and os.listdir(out.parent) == [out.name]  # one valid folder, ours removed
    assert json.loads((out / "pretrain.json").read_text())["steps"] == 2

    (out / "pretrain.json").unlink()  # a folder without its record (not written by us) is never used
    with pytest.raises(FileExistsError, match="no finished pretraining"):
        checkpoint()


def test_pretraining_needs_its_data_group(tmp_path, train_config):
    cfg = train_config(tmp_path, tmp_path / "cache", ["model=caduceus_mlm"], tiny=False)
    with pytest.raises(ValueError, match="do not go together"):
        train(cfg)


def test_without_a_reference_the_demo_cohort_reference_is_used(tmp_path, train_config):
    demo = ["demo.n_subjects=2", "demo.n_volumes=5", "demo.n_regions=4", "demo.variants_per_region=5"]
    args = ["experiment=pretrain_caduceus", *demo, *overrides(data__steps=2)]
    cfg = train_config(tmp_path, tmp_path / "cache", args, tiny=False)
    metrics, _ = train(cfg)
    record = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert Path(record["fasta"]).parent.parent == tmp_path / "cache" / "demo_cohort" and record["steps"] == 2
    assert 0 <= metrics["eval/accuracy"] <= 1
