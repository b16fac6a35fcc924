"""MLM pretraining of Caduceus on a FASTA: masking, training, published checkpoint layout, reuse, CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from genomics.alphabet import A_ID, MASK_ID, PAD_ID, T_ID
from genomics.caduceus import CaduceusForMaskedLM
from genomics.caduceus.mlm import ensure_pretrained, main, mask_tokens

SMALL = dict(batch_size=4, seq_len=32)
TINY = dict(d_model=8, n_layer=1, ssm_backend="torch")


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "ref.fa"
    path.write_text(">chr1\n" + "ACGGTCAT" * 40 + "\n>chr2\n" + "NNNN" + "ACGGTCAT" * 10 + "\n")
    return path


def test_masking_rates_and_labels():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(A_ID, T_ID + 1, (100, 1000), generator=g)
    ids[:, :100] = PAD_ID
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(1))
    selected = labels != -100
    assert not selected[:, :100].any()  # pads (and N, under the default N policy) are never masked
    assert abs(selected[:, 100:].float().mean().item() - 0.15) < 0.005
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])
    masked = (inputs[selected] == MASK_ID).float().mean().item()
    changed = ((inputs[selected] != MASK_ID) & (inputs[selected] != ids[selected])).float().mean().item()
    assert abs(masked - 0.8) < 0.01
    assert abs(changed - 0.1 * 3 / 4) < 0.01  # a random base equals the original one time in four
    assert ((inputs >= A_ID) & (inputs <= T_ID) | (inputs == MASK_ID) | (inputs == PAD_ID)).all()


def test_pretraining_learns_and_saves_the_published_layout(tmp_path, fasta):
    out = ensure_pretrained(fasta, tmp_path / "ckpt", TINY | {"d_model": 16}, steps=40, seed=0, lr=2e-2, **SMALL)
    files = {p.name for p in out.iterdir()}
    assert files == {"config.json", "model.safetensors", "pretrain.json", "tokenizer_config.json"}
    keys = load_file(out / "model.safetensors").keys()
    assert "caduceus.backbone.embeddings.word_embeddings.embedding.weight" in keys and "lm_head.complement_map" in keys
    record = json.loads((out / "pretrain.json").read_text())
    assert record["eval_accuracy"] > 0.5  # a periodic sequence: chance is 0.25
    model = CaduceusForMaskedLM.from_pretrained(out)
    assert model.config.rcps and model.config.d_model == 16


def test_ensure_pretrained_reuses_a_matching_checkpoint(tmp_path, fasta):
    out = ensure_pretrained(fasta, tmp_path / "ckpt", TINY, steps=2, seed=0, **SMALL)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert ensure_pretrained(fasta, out, TINY, steps=2, seed=0, **SMALL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    ensure_pretrained(fasta, out, TINY, steps=3, seed=0, **SMALL)
    assert json.loads((out / "pretrain.json").read_text())["inputs"]["steps"] == 3  # settings changed: retrained
    fasta.write_text(fasta.read_text().replace("ACGG", "ACGA", 1))
    ensure_pretrained(fasta, out, TINY, steps=3, seed=0, **SMALL)
    assert (out / "model.safetensors").stat().st_mtime_ns != stamp  # FASTA content changed: retrained


def test_cli(tmp_path, fasta, capsys):
    out = tmp_path / "cli"
    main([f"fasta={fasta}", f"out={out}", "steps=2", "seq_len=32", "batch_size=2", "d_model=8", "n_layer=1",
          "rcps=false", "ssm_backend=torch"])  # fmt: skip
    assert "eval_accuracy" in capsys.readouterr().out
    assert not CaduceusForMaskedLM.from_pretrained(out).config.rcps
    with pytest.raises(SystemExit):
        main([f"fasta={fasta}", f"out={out}", "not_a_field=1"])
