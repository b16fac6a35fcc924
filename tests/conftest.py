"""Shared pytest fixtures: GPU tests skip cleanly on CPU; the real train.yaml, composed as fusion.train composes it.

Tests run with --import-mode=importlib, so they cannot import this module: its helpers reach them as fixtures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

TINY_DEMO = [  # a small demo cohort: 16 subjects, 100 volumes, 4 regions of ~300 bp; batches of 4
    "demo.n_subjects=16",
    "demo.n_volumes=100",
    "demo.n_regions=4",
    "demo.region_length=300",
    "demo.region_length_jitter=20",
    "demo.variants_per_region=8",
    "demo.n_factors=2",
    "demo.split_fractions=[0.5,0.25,0.25]",
    "data.batch_size=4",
    "data.eval_batch_size=4",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def compose_train(tmp_path: Path, cache: Path, overrides: list[str], tiny: bool = True) -> DictConfig:
    """configs/train.yaml composed with `overrides` (after the TINY_DEMO ones unless tiny=False), as a run of
    fusion.train sees it: the hydra node resolved into paths (run folder tmp_path/run, logs tmp_path/logs, caches in
    `cache`) and then removed; progress bar and model summary off."""
    from fusion.train import CONFIG_DIR  # registers the application's resolvers and config-store nodes

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=(TINY_DEMO if tiny else []) + list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:runtime.output_dir} as in a real run
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.cache_dir = str(cache)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def train_config():
    """compose_train(tmp_path, cache, overrides, tiny=True) -> the composed train.yaml (see compose_train above)."""
    return compose_train


@pytest.fixture(scope="session")
def tiny_demo() -> list[str]:
    """The TINY_DEMO overrides (e.g. for a `python -m fusion.train` subprocess)."""
    return list(TINY_DEMO)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")  # the tiny demo cohort is generated once per session and reused


@pytest.fixture
def export_calls(monkeypatch) -> list:
    """The loaders fusion.export embeds (one per split it computes, none for a split it keeps)."""
    import fusion.export as export_module

    calls, real = [], export_module.embed_split

    def embed(model, loader, *args, **kwargs):
        calls.append(loader)
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(export_module, "embed_split", embed)
    return calls
