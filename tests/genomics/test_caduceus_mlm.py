"""MLM library pieces for Caduceus pretraining: BERT masking, FASTA windows, reproducible masked windows, RC
augmentation, masked loss/accuracy. The training (experiment and first-use pretraining): tests/test_pretrain.py."""

import pickle

import numpy as np
import pytest
import torch

from genomics.alphabet import A_ID, COMPLEMENT_MAP, MASK_ID, PAD_ID, T_ID, encode
from genomics.caduceus import CaduceusConfig, CaduceusForMaskedLM, reverse_complement
from genomics.caduceus.mlm import (
    IGNORE,
    FastaWindows,
    MaskedWindows,
    evaluate_mlm,
    mask_tokens,
    masked_lm_sums,
    rc_augment,
)


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "ref.fa"
    path.write_text(">chr1\n" + "ACGGTCAT" * 40 + "\n>chr2\n" + "NNNN" + "ACGGTCAT" * 10 + "\n>short\nACGTA\n")
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


def test_fasta_windows_cover_the_contigs_and_travel_to_workers(fasta):
    windows = FastaWindows(fasta, 16)
    assert windows.references == ["chr1", "chr2", "short"] and windows.lengths == [320, 84, 5]
    rng = np.random.default_rng(0)
    batch = windows.sample(400, rng)  # (B, L)
    assert batch.shape == (400, 16) and batch.dtype == torch.int64
    genome = "ACGGTCAT" * 40
    rows = ["".join("ACGT"[i - A_ID] if i != PAD_ID else "-" for i in row) for row in batch.tolist()]
    short = "-" * 11 + "ACGTA"  # the 5-base contig, left-padded
    assert all(r.strip("-") in genome or r == short for r in rows)
    assert any(r == short for r in rows) and any(r.startswith("-") and r != short for r in rows)  # chr2's N -> [PAD]
    clone = pickle.loads(pickle.dumps(windows))  # a DataLoader worker's copy opens its own file
    assert torch.equal(clone.sample(5, np.random.default_rng(1)), windows.sample(5, np.random.default_rng(1)))


def test_masked_windows_depend_on_seed_and_index_only(fasta):
    windows = FastaWindows(fasta, 32)
    a, b = MaskedWindows(windows, 50, seed=3), MaskedWindows(FastaWindows(fasta, 32), 50, seed=3)
    for i in (7, 0, 49, 7):  # any order, any instance: the same item
        x, y = a[i], b[i]
        assert all(torch.equal(x[k], y[k]) for k in ("inputs", "labels", "flip"))
    assert not torch.equal(a[1]["inputs"], MaskedWindows(windows, 50, seed=4)[1]["inputs"])
    assert not torch.equal(a[1]["inputs"], MaskedWindows(windows, 50, seed=3, stream=1)[1]["inputs"])
    flips = torch.stack([a[i]["flip"] for i in range(50)])
    assert 10 < flips.sum() < 40 and len(a) == 50


def test_rc_augment_equals_masking_the_reverse_complement():
    seq = "ACGGTCATTGCA"
    ids = torch.from_numpy(encode(seq))[None].repeat(2, 1)  # (2, L)
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(0), mlm_probability=0.5)
    out_in, out_lab = rc_augment(inputs, labels, torch.tensor([True, False]), COMPLEMENT_MAP)
    assert torch.equal(out_in[1], inputs[1]) and torch.equal(out_lab[1], labels[1])  # not flipped: unchanged
    rc = torch.from_numpy(encode(reverse_complement(seq)))
    sel = out_lab[0] != IGNORE
    assert torch.equal(sel, (labels[0] != IGNORE).flip(-1))  # the selected positions, mirrored
    assert torch.equal(out_lab[0][sel], rc[sel])  # labels: the reverse complement's bases
    assert torch.equal(out_in[0][~sel], rc[~sel])  # inputs: the reverse complement where nothing is masked
    assert torch.equal(out_in[0][sel] == MASK_ID, (inputs[0][labels[0] != IGNORE] == MASK_ID).flip(-1))
    back_in, back_lab = rc_augment(out_in, out_lab, torch.tensor([True, False]), COMPLEMENT_MAP)
    assert torch.equal(back_in, inputs) and torch.equal(back_lab, labels)  # an involution


def test_masked_loss_and_accuracy():
    labels = torch.tensor([[IGNORE, A_ID, T_ID, IGNORE]])
    logits = torch.full((1, 4, 16), -10.0)
    logits[0, 1, A_ID] = logits[0, 2, A_ID] = 10.0  # right at position 1, wrong at 2
    loss, correct, count = masked_lm_sums(logits, labels).tolist()
    assert (correct, count) == (1, 2) and loss == pytest.approx(20.0, abs=1e-3)


def test_evaluate_mlm_of_an_untrained_model_is_near_chance(fasta):
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, rcps=True, ssm_backend="torch")).train()
    loader = torch.utils.data.DataLoader(MaskedWindows(FastaWindows(fasta, 32), 32, seed=0), batch_size=8)
    metrics = evaluate_mlm(model, loader)
    assert model.training  # its mode is restored
    assert metrics["eval_accuracy"] < 0.6 and 1.0 < metrics["eval_loss"] < 4.0
