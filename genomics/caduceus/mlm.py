"""Masked-language-model pretraining of Caduceus on a FASTA file, in plain PyTorch (no Lightning, no Hydra).

References: Schiff et al. 2024, Sec. 4.1 (MLM pretraining: 15% masking, 80/10/10, AdamW lr 8e-3, cosine schedule with
10% warmup, grad clip 1.0; RC augmentation for the non-RCPS models); kuleshov-group/caduceus
`src/dataloaders/utils/mlm.py`; Devlin et al. 2019 (BERT masking).

    windows of seq_len bases drawn uniformly over the FASTA (pysam), N -> [PAD] (genomics.alphabet)
    -> 15% of the nucleotide positions selected: 80% -> [MASK], 10% -> a random base, 10% unchanged
    -> CaduceusForMaskedLM, cross-entropy on the selected positions only (labels -100 elsewhere)
    -> out_dir/{config.json, model.safetensors} in the published CaduceusForMaskedLM layout, plus
       tokenizer_config.json and pretrain.json (inputs, losses, held-out masked accuracy).
`ensure_pretrained` reuses out_dir when pretrain.json records the same inputs (FASTA sha256 + settings).
CLI: python -m genomics.caduceus.mlm fasta=ref.fa out=ckpt/ [steps=300 d_model=32 n_layer=2 rcps=true ...]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pysam
import torch
from torch import Tensor

from genomics.alphabet import A_ID, MASK_ID, N_ID, T_ID, encode, pad_left
from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.modeling import CaduceusForMaskedLM
from genomics.caduceus.tokenizer import CaduceusTokenizer, reverse_complement_ids

TINY = dict(d_model=32, n_layer=2, rcps=True)  # the demo's tiny Caduceus-PS
TRAIN_DEFAULTS = dict(batch_size=8, seq_len=256, lr=8e-3, weight_decay=0.1, warmup=0.1, grad_clip=1.0)


def mask_tokens(ids: Tensor, generator: torch.Generator, mlm_probability: float = 0.15) -> tuple[Tensor, Tensor]:
    """BERT masking of nucleotide positions of ids (B, L): returns (inputs, labels), labels -100 where no loss."""
    eligible = (ids >= A_ID) & (ids <= N_ID)  # bases (and N when kept as id 11); never [PAD] / specials
    u = torch.rand(ids.shape, generator=generator)  # (B, L)
    selected = eligible & (torch.rand(ids.shape, generator=generator) < mlm_probability)  # (B, L)
    labels = torch.where(selected, ids, torch.full_like(ids, -100))  # (B, L)
    random_base = torch.randint(A_ID, T_ID + 1, ids.shape, generator=generator)  # (B, L)
    inputs = torch.where(selected & (u < 0.8), torch.full_like(ids, MASK_ID), ids)  # 80% [MASK]
    inputs = torch.where(selected & (u >= 0.8) & (u < 0.9), random_base, inputs)  # 10% random base, 10% kept
    return inputs, labels


class FastaWindows:
    """Uniformly placed windows of `seq_len` ids over the contigs of a FASTA (shorter contigs left-padded)."""

    def __init__(self, fasta: str | Path, seq_len: int):
        self.fasta, self.seq_len = pysam.FastaFile(str(fasta)), seq_len
        lengths = np.array(self.fasta.lengths, dtype=np.float64)
        if lengths.sum() == 0:
            raise ValueError(f"{fasta} has no sequence")
        self.p = lengths / lengths.sum()  # contigs drawn by length

    def sample(self, batch_size: int, rng: np.random.Generator) -> Tensor:
        rows = []
        for c in rng.choice(len(self.p), size=batch_size, p=self.p):
            name, n = self.fasta.references[c], self.fasta.lengths[c]
            start = int(rng.integers(0, max(n - self.seq_len, 0) + 1))
            seq = self.fasta.fetch(name, start, min(start + self.seq_len, n))
            rows.append(pad_left(encode(seq), self.seq_len))
        return torch.from_numpy(np.stack(rows))  # (B, seq_len)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm weights, A_log and D (1-D or marked _no_weight_decay)."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain_mlm(
    fasta: str | Path,
    out_dir: str | Path,
    config_kwargs: dict | None = None,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 8,
    seq_len: int = 256,
    lr: float = 8e-3,
    weight_decay: float = 0.1,
    warmup: float = 0.1,
    grad_clip: float = 1.0,
    eval_batches: int = 4,
    device: str = "cpu",
    log_every: int = 50,
) -> dict:
    """Train a CaduceusForMaskedLM from scratch on FASTA windows; save it to out_dir; return the training record."""
    torch.manual_seed(seed)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    config = CaduceusConfig(**(TINY | dict(config_kwargs or {})))
    model = CaduceusForMaskedLM(config).to(device).train()
    windows = FastaWindows(fasta, seq_len)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    n_warm = max(1, int(warmup * steps))

    def lr_factor(s: int) -> float:  # linear warmup, then cosine to 0
        if s < n_warm:
            return (s + 1) / n_warm
        return 0.5 * (1 + math.cos(math.pi * (s - n_warm) / max(1, steps - n_warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, t0 = [], time.time()
    for step in range(steps):
        ids = windows.sample(batch_size, rng)  # (B, L)
        if not config.rcps:  # RC augmentation (p = 0.5 per sequence) for Caduceus-Ph, as upstream
            flip = torch.rand(batch_size, generator=gen) < 0.5
            ids[flip] = reverse_complement_ids(ids[flip], config.complement_map)
        inputs, labels = mask_tokens(ids, gen)
        loss = model(inputs.to(device), labels=labels.to(device)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.4f} ({time.time() - t0:.0f}s)")
    record = {"train_loss_last10": float(np.mean(losses[-10:])), "seconds": time.time() - t0, "losses": losses}
    record |= evaluate_mlm(model, windows, eval_batches, batch_size, seed + 1, device)
    model.save_pretrained(out_dir)
    CaduceusTokenizer(model_max_length=seq_len).save_pretrained(out_dir)
    return record


@torch.no_grad()
def evaluate_mlm(model, windows: FastaWindows, n_batches: int, batch_size: int, seed: int, device="cpu") -> dict:
    """Masked-token loss and accuracy on freshly drawn windows (chance accuracy is about 0.25)."""
    model.eval()
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    total, correct, loss_sum = 0, 0, 0.0
    for _ in range(n_batches):
        inputs, labels = mask_tokens(windows.sample(batch_size, rng), gen)
        logits = model(inputs.to(device)).logits.cpu()  # (B, L, V)
        sel = labels != -100
        loss_sum += torch.nn.functional.cross_entropy(logits[sel], labels[sel], reduction="sum").item()
        correct += (logits[sel].argmax(-1) == labels[sel]).sum().item()
        total += int(sel.sum())
    model.train()
    return {"eval_loss": loss_sum / max(total, 1), "eval_accuracy": correct / max(total, 1)}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_pretrained(
    fasta: str | Path,
    out_dir: str | Path,
    config_kwargs: dict | None = None,
    steps: int = 300,
    seed: int = 0,
    **train_kwargs,
) -> Path:
    """out_dir holding a CaduceusForMaskedLM pretrained on `fasta`; trained now unless out_dir/pretrain.json records
    the same inputs (FASTA content hash, config_kwargs, steps, seed, train_kwargs). Written to a temporary sibling
    folder first, then moved into place."""
    out_dir = Path(out_dir)
    inputs = {
        "fasta_sha256": file_sha256(fasta),
        "config_kwargs": TINY | dict(config_kwargs or {}),
        "steps": steps,
        "seed": seed,
        "train": TRAIN_DEFAULTS | {k: v for k, v in train_kwargs.items() if k not in ("device", "log_every")},
    }
    inputs = json.loads(json.dumps(inputs))  # the JSON view, so it compares equal to what was written
    record_file = out_dir / "pretrain.json"
    if record_file.is_file() and (out_dir / "model.safetensors").is_file():
        if json.loads(record_file.read_text()).get("inputs") == inputs:
            return out_dir
    tmp = out_dir.with_name(f"{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    record = pretrain_mlm(fasta, tmp, config_kwargs, steps, seed, **train_kwargs)
    (tmp / "pretrain.json").write_text(json.dumps({"inputs": inputs, "fasta": str(fasta), **record}, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir


def _value(text: str):
    """CLI values: ints, floats, true/false, else strings."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="MLM-pretrain a Caduceus on a FASTA. Arguments as key=value or --key value; keys other than "
        "the training ones are CaduceusConfig fields (d_model, n_layer, rcps, ...).",
    )
    parser.add_argument("--fasta", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--force", type=_value, default=False, help="retrain even if out holds the same run")
    for key, default in TRAIN_DEFAULTS.items():
        parser.add_argument(f"--{key}", type=type(default), default=default)
    argv = [f"--{a}" if "=" in a and not a.startswith("-") else a for a in (sys.argv[1:] if argv is None else argv)]
    args, rest = parser.parse_known_args(argv)
    config_kwargs, fields = {}, inspect.signature(CaduceusConfig.__init__).parameters
    for item in rest:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not item.startswith("--") or key not in fields or key in ("self", "kwargs"):
            parser.error(f"unrecognised argument {item!r}: not a training option or CaduceusConfig field")
        config_kwargs[key] = _value(value)
    if args.force:
        shutil.rmtree(args.out, ignore_errors=True)
    train = {k: getattr(args, k) for k in TRAIN_DEFAULTS} | {"device": args.device, "log_every": args.log_every}
    out = ensure_pretrained(args.fasta, args.out, config_kwargs, args.steps, args.seed, **train)
    record = json.loads((out / "pretrain.json").read_text())
    print(f"{out}: eval_loss {record['eval_loss']:.4f}, eval_accuracy {record['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
