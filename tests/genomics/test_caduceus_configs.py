"""configs/genomics/caduceus_*.yaml, composed through train.yaml, instantiate CaduceusGenomicsEncoder from local
checkpoints (small stand-ins of the published variants) and build their head to model.embed_dim."""

import pytest
import torch
from hydra.utils import instantiate

from fusion.app.build import instantiate_with
from genomics.caduceus import CaduceusConfig, CaduceusForMaskedLM
from genomics.caduceus.config import PUBLISHED

NAMES = {  # config -> the published checkpoint its default path names
    "caduceus_ps_131k": "caduceus-ps_seqlen-131k_d_model-256_n_layer-16",
    "caduceus_ph_131k": "caduceus-ph_seqlen-131k_d_model-256_n_layer-16",
    "caduceus_ps_1k": "caduceus-ps_seqlen-1k_d_model-256_n_layer-4_lr-8e-3",
    "caduceus_ph_1k": "caduceus-ph_seqlen-1k_d_model-118_n_layer-4_lr-8e-3",
}
COHORT = {"n_regions": 2}  # what fusion.app.build hands the encoder from the cohort (Cohort.inputs("genomics"))


def genomics(train_config, tmp_path, name: str, *overrides: str):
    """The `genomics` node of train.yaml with genomics=name, the project root at tmp_path; and model.embed_dim."""
    base = [f"genomics={name}", f"paths.root_dir={tmp_path}", "genomics/pooling=mean"]  # token ids in (the default
    cfg = train_config(tmp_path, tmp_path / "cache", [*base, *overrides])  # site pooling: test_caduceus_pooling.py)
    assert {"transform", "encoder", "head"} <= set(cfg.genomics) and "lock" not in cfg.genomics
    return cfg.genomics, cfg.model.embed_dim


def check_frozen_with_head(encoder, head_cfg, embed_dim: int, d_model: int):
    assert encoder.freeze and not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        assert encoder(torch.randint(7, 11, (2, 2, 2, 24))).shape == (2, 2 * d_model)  # concat over the 2 regions
    head = instantiate(head_cfg)(in_dim=encoder.output_dim)
    assert head.output_dim == embed_dim and head(torch.randn(3, encoder.output_dim)).shape == (3, embed_dim)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_published_size_configs_load_a_local_folder(name, tmp_path, train_config):
    cfg, embed_dim = genomics(train_config, tmp_path, name)
    assert cfg.encoder.checkpoint == f"{tmp_path}/models/{NAMES[name]}"
    published = CaduceusConfig.published(NAMES[name])
    tiny = CaduceusConfig(**(PUBLISHED[NAMES[name]] | {"d_model": 8, "n_layer": 1}))  # same variant, small
    CaduceusForMaskedLM(tiny).save_pretrained(cfg.encoder.checkpoint)
    encoder = instantiate_with(cfg.encoder, COHORT)
    assert encoder.embedder.rcps == published.rcps and encoder.output_dim == 2 * 8
    check_frozen_with_head(encoder, cfg.head, embed_dim, d_model=8)


def test_tiny_config_takes_any_local_checkpoint(tmp_path, train_config):
    folder = tmp_path / "mlm"
    CaduceusForMaskedLM(CaduceusConfig(d_model=32, n_layer=2, rcps=True)).save_pretrained(folder)
    cfg, embed_dim = genomics(train_config, tmp_path, "caduceus_tiny", f"genomics.encoder.checkpoint={folder}")
    encoder = instantiate_with(cfg.encoder, COHORT)
    assert encoder.output_dim == 2 * 32 and encoder.embedder.rcps
    check_frozen_with_head(encoder, cfg.head, embed_dim, d_model=32)
