"""configs/brain/*.yaml: every option instantiates; the tiny ones run transform -> encoder on a generated scan."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from brain.preprocess import read_atlas_coords
from fusion.app.build import instantiate_with

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "brain"
TINY = ["brainlm_mae_tiny", "brainlm_vitmae_tiny", "swift_tiny", "brainmt_tiny"]
PUBLISHED = {"brainlm_mae": 256, "brainlm_vitmae_111m": 768, "swift": 288, "brainmt": 512}


def compose(name: str, atlas_files):
    cfg = OmegaConf.create({"brain": OmegaConf.load(CONFIGS / f"{name}.yaml")})
    assert set(cfg.brain) == {"transform", "encoder", "head", "lock"} and cfg.brain.encoder.checkpoint is None
    assert cfg.brain.lock == cfg.brain.encoder.freeze
    return cfg.brain


def cohort_inputs(atlas_files) -> dict:
    """What fusion.app.build hands brain transforms and encoders (Cohort.inputs("brain")), from the test atlas."""
    atlas, coords = atlas_files
    coords = read_atlas_coords(coords)
    return {"atlas": atlas, "labels": coords.labels, "atlas_coords": coords, "coords": coords}


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory, synth):
    return synth.make_scan(tmp_path_factory.mktemp("long") / "sub-02_bold.nii.gz", n_frames=104)


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_run_end_to_end(name, atlas_files, long_scan):
    brain = compose(name, atlas_files)
    inputs = cohort_inputs(atlas_files)
    transform, encoder = instantiate_with(brain.transform, inputs), instantiate_with(brain.encoder, inputs).eval()
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
    inputs = cohort_inputs(atlas_files)
    instantiate_with(brain.transform, inputs)
    encoder = instantiate_with(brain.encoder, inputs)
    assert encoder.output_dim == PUBLISHED[name]
