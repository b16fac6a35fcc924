"""configs/brain/*.yaml: every option instantiates; the tiny ones run transform -> encoder on a generated scan."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "brain"
TINY = ["brainlm_mae_tiny", "brainlm_vitmae_tiny", "swift_tiny", "brainmt_tiny"]
PUBLISHED = {"brainlm_mae": 256, "brainlm_vitmae_111m": 768, "swift": 288, "brainmt": 512}


def compose(name: str, atlas_files):
    atlas, coords = atlas_files
    cfg = OmegaConf.create(
        {"data": {"atlas": atlas, "atlas_coords": coords}, "brain": OmegaConf.load(CONFIGS / f"{name}.yaml")}
    )
    assert set(cfg.brain) == {"transform", "encoder", "head", "lock"} and cfg.brain.encoder.checkpoint is None
    assert cfg.brain.lock == cfg.brain.encoder.freeze
    return cfg.brain


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory, synth):
    return synth.make_scan(tmp_path_factory.mktemp("long") / "sub-02_bold.nii.gz", n_frames=104)


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_run_end_to_end(name, atlas_files, long_scan):
    brain = compose(name, atlas_files)
    transform, encoder = instantiate(brain.transform), instantiate(brain.encoder).eval()
    x = transform(long_scan)  # evaluation windows
    xt = transform(long_scan, train=True, rng=None)
    assert xt.shape[0] == 1 and xt.shape[1:] == x.shape[1:]
    with torch.no_grad():
        z = encoder(torch.stack([x, x]))  # (B=2, W, ...)
    assert z.shape == (2, encoder.output_dim) and torch.isfinite(z).all() and torch.equal(z[0], z[1])
    head = instantiate(brain.head)(in_dim=encoder.output_dim)
    assert head(z).shape[0] == 2


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_instantiate(name, atlas_files):
    brain = compose(name, atlas_files)
    instantiate(brain.transform)
    encoder = instantiate(brain.encoder)
    assert encoder.output_dim == PUBLISHED[name]
