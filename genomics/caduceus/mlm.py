"""Masked-language-model (MLM) pieces for pretraining Caduceus on a FASTA: windows, BERT masking, RC augmentation,
the masked-token loss and accuracy. Library code (no Lightning, no Hydra, no training loop): the training itself is
the application's `python -m fusion.train experiment=pretrain_caduceus` (fusion/app/pretrain.py).

References: Schiff et al. 2024, Sec. 4.1 (MLM pretraining: 15% masking, 80/10/10; RC augmentation for the non-RCPS
models); kuleshov-group/caduceus `src/dataloaders/utils/mlm.py`; Devlin et al. 2019 (BERT masking).

    FastaWindows   windows of seq_len bases drawn uniformly over the FASTA (pysam), N -> [PAD] (genomics.alphabet)
    mask_tokens    15% of the nucleotide positions selected: 80% -> [MASK], 10% -> a random base, 10% unchanged;
                   labels are the original ids there and -100 elsewhere (no loss)
    MaskedWindows  a Dataset of n masked windows; item i depends only on (seed, stream, i), so a run is reproducible
                   from its seed whatever the workers, devices or resumption
    rc_augment     reverse-complement the flagged rows of (inputs, labels), for Caduceus-Ph (upstream's rc_aug)
    masked_lm_sums / evaluate_mlm   cross-entropy and accuracy over the selected positions only
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pysam
import torch
from torch import Tensor

from genomics.alphabet import A_ID, MASK_ID, N_ID, T_ID, complement_table, encode, pad_left

IGNORE = -100  # label of the positions without loss (torch.nn.functional.cross_entropy's ignore_index)


def mask_tokens(ids: Tensor, generator: torch.Generator, mlm_probability: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT masking of nucleotide positions of ids (B, L): returns (inputs, labels), labels -100 where no loss."""
    eligible = (ids >= A_ID) & (ids <= N_ID)  # bases (and N when kept as id 11); never [PAD] / specials
    u = torch.rand(ids.shape, generator=generator)  # (B, L)
    selected = eligible & (torch.rand(ids.shape, generator=generator) < mlm_probability)  # (B, L)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))  # (B, L)
    random_base = torch.randint(A_ID, T_ID + 1, ids.shape, generator=generator)  # (B, L)
    inputs = torch.where(selected & (u < 0.8), torch.full_like(ids, MASK_ID), ids)  # 80% [MASK]
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_base, inputs)  # 10% random base, 10% kept
    return inputs, labels


class FastaWindows:
    """Uniformly placed windows of `seq_len` ids over the contigs of a FASTA (contigs drawn by length; shorter
    contigs left-padded). The file is opened lazily once per process, so the object can go to DataLoader workers."""

    def __init__(self, fasta: str | Path, seq_len: int):
        self.path, self.seq_len = str(fasta), int(seq_len)
        with pysam.FastaFile(self.path) as f:  # builds the .fai when it is missing
            self.references, self.lengths = list(f.references), list(f.lengths)
        total = float(sum(self.lengths))
        if total == 0:
            raise ValueError(f"{fasta} has no sequence")
        self.p = np.array(self.lengths, dtype=np.float64) / total
        self._file, self._pid = None, None

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_file": None, "_pid": None}  # pysam handles do not travel between processes

    def _fasta(self) -> pysam.FastaFile:
        if self._pid != os.getpid():
            self._file, self._pid = pysam.FastaFile(self.path), os.getpid()
        return self._file

    def window(self, rng: np.random.Generator) -> np.ndarray:
        """One window (seq_len,) of ids: a contig by length, then a uniform start."""
        c = int(rng.choice(len(self.p), p=self.p))
        n = self.lengths[c]
        start = int(rng.integers(0, max(n - self.seq_len, 0) + 1))
        seq = self._fasta().fetch(self.references[c], start, min(start + self.seq_len, n))
        return pad_left(encode(seq), self.seq_len)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Tensor:
        return torch.from_numpy(np.stack([self.window(rng) for _ in range(batch_size)]))  # (B, seq_len)


class MaskedWindows(torch.utils.data.Dataset):
    """n BERT-masked windows of a FASTA. Item i is drawn from the random stream (seed, stream, i) alone: window,
    mask and an RC coin `flip` (p = 0.5; used by models trained with RC augmentation, ignored by RCPS ones)."""

    def __init__(self, windows: FastaWindows, n: int, seed: int, stream: int = 0, mlm_probability: float = 0.15):
        self.windows, self.n, self.seed, self.stream = windows, int(n), int(seed), int(stream)
        self.mlm_probability = mlm_probability

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rng = np.random.default_rng([self.seed, self.stream, int(i)])
        ids = torch.from_numpy(self.windows.window(rng))[None]  # (1, L)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        inputs, labels = mask_tokens(ids, generator, self.mlm_probability)
        return {"inputs": inputs[0], "labels": labels[0], "flip": torch.tensor(bool(rng.random() < 0.5))}


def rc_augment(inputs: Tensor, labels: Tensor, flip: Tensor, complement_map: dict) -> tuple[Tensor, Tensor]:
    """Reverse-complement the rows of inputs and labels (B, L) where flip (B,) is true. Masking commutes with it:
    [MASK] and the specials are their own complements and a random base stays uniform, so this equals masking the
    reverse-complemented window."""
    rows = flip.bool().to(inputs.device)
    if not rows.any():
        return inputs, labels
    table = complement_table(complement_map=complement_map).to(inputs.device)  # (V,)
    inputs, labels = inputs.clone(), labels.clone()
    inputs[rows] = table[inputs[rows].flip(-1)]
    reversed_labels = labels[rows].flip(-1)  # (F, L)
    labels[rows] = torch.where(reversed_labels == IGNORE, reversed_labels, table[reversed_labels.clamp(min=0)])
    return inputs, labels


def masked_lm_sums(logits: Tensor, labels: Tensor) -> Tensor:
    """(loss sum, correct, count) over the selected positions of logits (B, L, V) and labels (B, L), float64 (3,)."""
    sel = labels != IGNORE
    logits, target = logits[sel].float(), labels[sel]  # (S, V), (S,)
    loss = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    correct = (logits.argmax(-1) == target).sum()
    return torch.stack([loss.double(), correct.double(), sel.sum().double()])


@torch.no_grad()
def evaluate_mlm(model: torch.nn.Module, batches: Iterable[dict], device: str | torch.device = "cpu") -> dict:
    """Masked-token loss and accuracy of a CaduceusForMaskedLM over batches of MaskedWindows items (chance accuracy
    is about 0.25); the model is put back in its former mode."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for batch in batches:
        logits = model(batch["inputs"].to(device)).logits  # (B, L, V)
        sums += masked_lm_sums(logits, batch["labels"].to(device)).cpu()
    model.train(was_training)
    loss, correct, count = sums.tolist()
    return {"eval_loss": loss / max(count, 1), "eval_accuracy": correct / max(count, 1)}
