"""configs/brain/*.yaml, composed through train.yaml: every option instantiates; the tiny ones run transform ->
encoder -> head on a generated scan."""

import pytest
import torch
from hydra.utils import instantiate

from brain.preprocess import read_atlas_coords
from fusion.app.build import instantiate_with

TINY = ["brainlm_mae_tiny", "brainlm_vitmae_tiny", "swift_tiny", "brainmt_tiny"]
PUBLISHED = {"brainlm_mae": 256, "brainlm_vitmae_111m": 768, "swift": 288, "brainmt": 512}


def compose(name: str, train_config, tmp_path):
    """The `brain` node of train.yaml with brain=name; and model.embed_dim."""
    cfg = train_config(tmp_path, tmp_path / "cache", [f"brain={name}"])
    assert set(cfg.brain) == {"transform", "encoder", "head"} and cfg.brain.encoder.checkpoint is None
    assert cfg.brain.head.out_dim == cfg.model.embed_dim
    return cfg.brain, cfg.model.embed_dim


def cohort_inputs(atlas_files) -> dict:
    """What fusion.app.build hands brain transforms and encoders (Cohort.inputs("brain")), from the test atlas."""
    atlas, coords = atlas_files
    coords = read_atlas_coords(coords)
    return {"atlas": atlas, "labels": coords.labels, "atlas_coords": coords, "coords": coords}


@pytest.fixture(scope="module")
def long_scan(tmp_path_factory, synth):
    return synth.make_scan(tmp_path_factory.mktemp("long") / "sub-02_bold.nii.gz", n_frames=104)


@pytest.mark.parametrize("name", TINY)
def test_tiny_configs_run_end_to_end(name, atlas_files, long_scan, train_config, tmp_path):
    brain, embed_dim = compose(name, train_config, tmp_path)
    inputs = cohort_inputs(atlas_files)
    transform, encoder = instantiate_with(brain.transform, inputs), instantiate_with(brain.encoder, inputs).eval()
    x = transform(long_scan)  # evaluation windows
    xt = transform(long_scan, train=True, rng=None)
    assert xt.shape[0] == 1 and xt.shape[1:] == x.shape[1:]
    with torch.no_grad():
        z = encoder(torch.stack([x, x]))  # (B=2, W, ...)
    assert z.shape == (2, encoder.output_dim) and torch.isfinite(z).all() and torch.equal(z[0], z[1])
    head = instantiate(brain.head)(in_dim=encoder.output_dim)
    assert head(z).shape == (2, embed_dim) and head.output_dim == embed_dim


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_instantiate(name, atlas_files, train_config, tmp_path):
    brain, _ = compose(name, train_config, tmp_path)
    inputs = cohort_inputs(atlas_files)
    instantiate_with(brain.transform, inputs)
    encoder = instantiate_with(brain.encoder, inputs)
    assert encoder.output_dim == PUBLISHED[name]
