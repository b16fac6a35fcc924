"""Every option of every config group composes through the real train.yaml (as fusion.train composes it), resolves,
names importable targets and no second freeze name; the cheap parts are instantiated. Plus the single sources: one
width (model.embed_dim) for every head, the loss group, the trainers' common base, the optional experiment, and a
root directory that resolves before Hydra's runtime config exists (multirun sweep dirs)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from fusion.train import CONFIG_DIR

TOWERS = ("genomics", "brain")


def config_groups() -> dict[str, list[str]]:
    """Every group of configs/ (and of the config store) and its options; Hydra's own groups left out."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {g: sorted(loader.get_group_options(g)) for g in loader.list_groups("") if g != "hydra"}


def in_train_defaults() -> set[str]:
    return {next(iter(d)) for d in OmegaConf.load(f"{CONFIG_DIR}/train.yaml").defaults if isinstance(d, DictConfig)}


GROUPS = config_groups()
OPTIONS = [(g, o) for g, options in sorted(GROUPS.items()) for o in options]


class Stub(nn.Module):
    """A stand-in encoder (the encoder interface: output_dim, (B, 8) -> (B, 8))."""

    output_dim = 8

    def forward(self, x):
        return x


def walk(node, path=""):
    """(dotted key, value) of every entry of a container, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        key = f"{path}.{k}" if path else str(k)
        yield key, v
        yield from walk(v, key)


def test_the_groups_are_the_documented_ones():
    expected = {"brain", "callbacks", "data", "demo", "experiment", "genomics", "head", "logger", "loss", "model"}
    assert expected | {"paths", "trainer"} <= set(GROUPS)
    assert {"cpu", "gpu", "ddp", "ddp_cpu", "default"} <= set(GROUPS["trainer"]) and "clip" in GROUPS["loss"]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_through_train_yaml(group, option, tmp_path, train_config):
    override = f"{group}={option}" if group in in_train_defaults() else f"+{group}={option}"
    cfg = train_config(tmp_path, tmp_path / "cache", [override], tiny=False)
    node = cfg if group == "experiment" else cfg[group]  # an experiment is a whole run; a group option its node
    plain = OmegaConf.to_container(node, resolve=True)  # every interpolation resolves
    for key, value in walk(plain):
        assert key.rsplit(".", 1)[-1] not in ("lock", "lock_genomics", "lock_brain", "locked"), key  # one name
        if key.endswith("_target_"):
            assert callable(get_object(value)), key
        if key.endswith(".freeze") or key == "freeze":
            assert isinstance(value, bool), key
    embed_dim = cfg.model.get("embed_dim")
    if group in TOWERS:
        assert {"transform", "encoder", "head"} <= set(node)
        check_head(node.head, embed_dim)
    elif group == "head":
        check_head(node, embed_dim)
    elif group == "loss":
        z_g, z_b = (F.normalize(torch.randn(4, 16), dim=-1) for _ in range(2))
        assert torch.isfinite(instantiate(node)(z_g, z_b, torch.tensor(10.0)))
    elif group == "model" and node._target_ == "fusion.app.module.AlignmentModule":
        module = instantiate(node, net={"genomics_encoder": Stub(), "brain_encoder": Stub()})
        assert module.net.embed_dim == embed_dim and isinstance(module.loss, get_object(cfg.loss._target_))
    elif group == "trainer" and node.accelerator in ("cpu", "auto") and not torch.cuda.is_available():
        trainer = instantiate(node, logger=False, callbacks=[], enable_checkpointing=False)
        assert trainer.max_epochs == node.max_epochs
    elif group == "callbacks":
        assert all(isinstance(instantiate(c), Callback) for c in node.values())
    elif group == "paths":
        assert os.path.isabs(node.root_dir) and os.path.isabs(node.cache_dir)


def check_head(head: DictConfig, embed_dim: int) -> None:
    assert head.out_dim == embed_dim == 512  # interpolated from the one key, model.embed_dim
    built = instantiate(head)(in_dim=8)
    assert built.output_dim == embed_dim and built(torch.randn(3, 8)).shape == (3, embed_dim)


def test_one_width_reaches_every_head_and_the_model(tmp_path, train_config):
    cfg = train_config(tmp_path, tmp_path / "cache", ["model.embed_dim=64", "brain=swift_tiny"], tiny=False)
    assert cfg.genomics.head.out_dim == cfg.brain.head.out_dim == 64
    module = instantiate(cfg.model, net={"genomics_encoder": Stub(), "brain_encoder": Stub()})
    assert module.net.embed_dim == module.hparams.embed_dim == 64
    z = module.net(torch.randn(4, 8), torch.randn(4, 8))
    assert z["genomics"].shape == z["brain"].shape == (4, 64)
    for overrides in (["genomics.head.out_dim=32"], ["genomics.head.out_dim=32", "brain.head.out_dim=32"]):
        bad = train_config(tmp_path, tmp_path / "cache", overrides, tiny=False)  # heads apart / off model.embed_dim
        with pytest.raises(InstantiationException, match="output_dim|embed_dim"):
            instantiate(bad.model, net={"genomics_encoder": Stub(), "brain_encoder": Stub()})


def test_per_option_head_overrides_only_what_differs(tmp_path, train_config):
    base = OmegaConf.load(f"{CONFIG_DIR}/head/projection.yaml")
    for tower in TOWERS:
        for option in GROUPS[tower]:
            raw = OmegaConf.load(f"{CONFIG_DIR}/{tower}/{option}.yaml")
            assert "lock" not in raw and any(d == {"/head@head": "projection"} for d in raw.defaults), option
            assert all(raw.head[k] != base[k] for k in raw.get("head", {})), option  # nothing restated
    fc = train_config(tmp_path, tmp_path / "cache", ["brain=fc"], tiny=False).brain.head
    assert fc.hidden_dim == 256 and fc.input_norm and fc.dropout == base.dropout


def test_the_loss_group_is_the_modules_loss(tmp_path, train_config):
    cfg = train_config(tmp_path, tmp_path / "cache", ["loss.weight_g2b=0.75"], tiny=False)
    assert cfg.model.loss == cfg.loss and cfg.loss._target_ == "fusion.losses.ClipLoss"
    module = instantiate(cfg.model, net={"genomics_encoder": Stub(), "brain_encoder": Stub()})
    assert module.loss.weight_g2b == 0.75


def test_trainers_build_on_one_default(tmp_path, train_config):
    def trainer(option):
        return OmegaConf.to_container(train_config(tmp_path, tmp_path / "c", [f"trainer={option}"], tiny=False).trainer)

    base = trainer("default")
    hardware = {"accelerator", "devices", "precision", "strategy", "num_nodes", "sync_batchnorm"}
    for option in ("cpu", "gpu", "ddp", "ddp_cpu"):
        t = trainer(option)
        assert base.keys() <= t.keys()
        assert {k for k in base if t[k] != base[k]} | (t.keys() - base.keys()) <= hardware | {"use_distributed_sampler"}
    assert trainer("cpu")["accelerator"] == "cpu" and trainer("ddp_cpu")["strategy"] == "ddp_spawn"
    assert trainer("gpu")["precision"] == trainer("ddp")["precision"] == "bf16-mixed"
    for key in ("gpu", "ddp", "ddp_cpu", "cpu"):
        raw = OmegaConf.load(f"{CONFIG_DIR}/trainer/{key}.yaml")
        assert "max_epochs" not in raw and "_target_" not in raw  # shared settings live in default.yaml only


def test_the_experiment_is_optional_and_demo_restates_the_defaults(tmp_path, train_config):
    plain = train_config(tmp_path, tmp_path / "cache", [], tiny=False)
    demo = train_config(tmp_path, tmp_path / "cache", ["experiment=demo"], tiny=False)
    with_tags = OmegaConf.to_container(demo, resolve=True)
    without = OmegaConf.to_container(plain, resolve=True)
    assert with_tags.pop("tags") == ["demo", "baseline"] and without.pop("tags") == ["dev"]
    assert with_tags == without  # `python -m fusion.train` trains the demo
    assert plain.genomics.encoder._target_ == "genomics.models.KmerSpectrum"
    assert plain.brain.encoder._target_ == "brain.connectivity.FunctionalConnectivity"


def test_the_sweep_dir_resolves_before_hydra_sets_its_runtime_config(monkeypatch, tmp_path):
    """A multirun's launcher resolves hydra.sweep.dir (-> paths.root_dir) before any job's HydraConfig exists."""
    monkeypatch.delenv("GENOBRAIN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[], return_hydra_config=True)
    HydraConfig.instance().cfg = None  # as in the launcher
    assert cfg.hydra.sweep.dir.startswith(f"{tmp_path}/logs/train/multiruns/")
    monkeypatch.setenv("GENOBRAIN_ROOT", "/somewhere")
    assert cfg.paths.log_dir == "/somewhere/logs"
    HydraConfig.instance().set_config(cfg)  # inside a job: Hydra's runtime.cwd
    monkeypatch.delenv("GENOBRAIN_ROOT")
    assert cfg.paths.root_dir == str(tmp_path) and isinstance(cfg.tags, ListConfig)
