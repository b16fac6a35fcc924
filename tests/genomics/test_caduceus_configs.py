"""configs/genomics/caduceus_*.yaml instantiate CaduceusGenomicsEncoder from local checkpoints / a FASTA."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genomics.caduceus import CaduceusConfig, CaduceusForMaskedLM
from genomics.caduceus.config import PUBLISHED

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "genomics"
NAMES = {  # config -> the published checkpoint its default path names
    "caduceus_ps_131k": "caduceus-ps_seqlen-131k_d_model-256_n_layer-16",
    "caduceus_ph_131k": "caduceus-ph_seqlen-131k_d_model-256_n_layer-16",
    "caduceus_ps_1k": "caduceus-ps_seqlen-1k_d_model-256_n_layer-4_lr-8e-3",
    "caduceus_ph_1k": "caduceus-ph_seqlen-1k_d_model-118_n_layer-4_lr-8e-3",
}


def group(name: str, tmp_path: Path, **data):
    root = OmegaConf.create(
        {
            "data": {"n_regions": 2, "reference": None, "vcf": None, "regions": None} | data,
            "paths": {"root_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
            "genomics": OmegaConf.load(CONFIGS / f"{name}.yaml"),
        }
    )
    return root.genomics


@pytest.mark.parametrize("name", sorted(NAMES))
def test_published_size_configs_load_a_local_folder(name, tmp_path):
    cfg = group(name, tmp_path)
    assert cfg.encoder.checkpoint == f"{tmp_path}/models/{NAMES[name]}"
    published = CaduceusConfig.published(NAMES[name])
    tiny = CaduceusConfig(**(PUBLISHED[NAMES[name]] | {"d_model": 8, "n_layer": 1}))  # same variant, small
    CaduceusForMaskedLM(tiny).save_pretrained(cfg.encoder.checkpoint)
    encoder = instantiate(cfg.encoder)
    assert encoder.embedder.rcps == published.rcps and encoder.output_dim == 2 * 8 and cfg.lock
    with torch.no_grad():
        assert encoder(torch.randint(7, 11, (2, 2, 2, 24))).shape == (2, 16)
    assert instantiate(cfg.head)(in_dim=encoder.output_dim)(torch.randn(3, 16)).shape == (3, 512)


def test_tiny_config_pretrains_on_the_reference(tmp_path):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr1\n" + "ACGGTCATTG" * 30 + "\n")
    cfg = group("caduceus_tiny", tmp_path, reference=str(fasta))
    cfg.encoder.pretrain.steps, cfg.encoder.pretrain.seq_len = 2, 32
    encoder = instantiate(cfg.encoder)
    assert (tmp_path / "cache" / "caduceus_tiny" / "model.safetensors").is_file()
    assert encoder.output_dim == 2 * 32 and encoder.embedder.rcps
    cfg.encoder.checkpoint = str(tmp_path / "cache" / "caduceus_tiny")  # any local checkpoint instead
    cfg.encoder.pretrain.fasta = "/nonexistent.fa"  # not used when a checkpoint is given
    assert instantiate(cfg.encoder).output_dim == 64
