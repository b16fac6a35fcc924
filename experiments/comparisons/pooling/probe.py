"""Rank CaduceusGenomicsEncoder pooling settings on the demo cohort's VALIDATION split with a linear probe (issue 9).

    python experiments/comparisons/pooling/probe.py [--root DIR] [--no-fill]

Why: one `python -m fusion.train experiment=demo_caduceus` run takes 5-30 min on 2 shared cores, and every pooling
window needs its own backbone pass; the tiny frozen model's per-token embeddings, though, are enough to derive every
pooling mode. So this script embeds each distinct haplotype of the training and validation subjects once (per-token,
strand-invariant, kept in memory), and then, for each setting, builds the real encoder (the genomics=caduceus_tiny
config with the setting's overrides, hydra.utils.instantiate; its own pooling code, site_norm fit included) with its
embedder answering from those stored token embeddings, and scores the features with a linear probe: ridge regression
from the (standardised, as the head's input_norm does, unless the setting turns it off) genomics features to the top
principal components of the brain features (functional connectivity, brain=fc, fixed per subject), fitted on the
training split; validation retrieval genome->brain R@1/R@5 by cosine similarity of predicted and actual components
(ridge alpha picked on validation too). The k-mer and dosage baselines are probed the same way for calibration.
Test subjects' brains are never read here and nothing is scored on them: their genomes are embedded only so that, at
the end (unless --no-fill), the pooled embeddings of the two best settings' windows for every subject are written into
the runs' disk embedding cache (${paths.cache_dir}/embeddings, keyed as the encoder keys them), and the real runs that
follow make no backbone pass. Results: experiments/comparisons/pooling/probe.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict
from torch.utils.data import default_collate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from fusion.app.build import build_inputs, encoder_inputs, instantiate_with  # noqa: E402
from fusion.app.cohort_source import resolve_cohort  # noqa: E402
from fusion.app.pretrain import resolve_pretrained_encoder  # noqa: E402
from fusion.train import CONFIG_DIR  # noqa: E402  (registers the application's resolvers)
from genomics.models.caduceus import token_embeddings  # noqa: E402

BASE = {"pool": "mean", "window": 0, "site_pool": "concat", "site_norm": False}  # under every setting's overrides
# settings probed: (name, genomics.encoder overrides, head input_norm)
SETTINGS = [
    ("mean", {"pool": "mean"}, True),
    *[(f"sites w{w}", {"pool": "sites", "window": w}, True) for w in (0, 4, 16)],
    *[(f"diff w{w}", {"pool": "diff", "window": w}, True) for w in (0, 1, 4, 16, 64)],
    *[(f"diff w{w} site_norm", {"pool": "diff", "window": w, "site_norm": True}, False) for w in (0, 1, 4, 16)],
    ("diff w0 site_pool=mean", {"pool": "diff", "window": 0, "site_pool": "mean"}, True),
]
ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
N_COMPONENTS = 20


RUNS = {  # the fusion.train overrides of each genomics encoder's demo run
    "caduceus_tiny": ["experiment=demo_caduceus", "genomics.transform.sites=true"],  # every mode from one input
    "kmer": ["experiment=demo"],
    "dosage": ["genomics=dosage"],
}


def compose_run(genomics: str, root: Path):
    """configs/train.yaml with the RUNS overrides of `genomics`, resolved as fusion.train would (cohort files,
    first-use pretrained checkpoint), without the hydra node."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train", overrides=[*RUNS[genomics], f"paths.root_dir={root}"],
            return_hydra_config=True,
        )  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "probe_run")
        del cfg.hydra
    resolve_cohort(cfg)
    resolve_pretrained_encoder(cfg)
    return cfg


class StoredEmbedder:
    """Stands in for CaduceusEmbedder.forward: ids (N, L) -> the stored (N, L, D) strand-invariant token embeddings."""

    def __init__(self, store: dict[bytes, torch.Tensor]):
        self.store = store

    def __call__(self, ids):
        return torch.stack([self.store[_key(row)] for row in ids]).float()


def _key(row) -> bytes:
    return hashlib.blake2b(row.cpu().numpy().tobytes(), digest_size=16).digest()


def embed_tokens(backbone_embedder, rows: list, chunk: int = 64) -> dict:
    """Per-token strand-invariant embeddings (float32, as the encoder computes them) of every distinct row."""
    store, todo = {}, {}
    for r in rows:
        todo.setdefault(_key(r), r)
    keys = list(todo)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(keys), chunk):
            batch = torch.stack([todo[key] for key in keys[k : k + chunk]])
            h = token_embeddings(backbone_embedder(batch))  # (c, L, D)
            store.update(zip(keys[k : k + chunk], h.clone()))
            if k % (chunk * 20) == 0:
                print(f"  embedded {k + len(batch)}/{len(keys)} in {time.perf_counter() - t0:.0f} s", flush=True)
    return store


def probe(g_train, g_val, b_train, b_val, standardise: bool) -> dict:
    """Ridge (genomics -> brain principal components) fitted on train; validation retrieval by cosine similarity."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    bs = StandardScaler().fit(b_train)
    pca = PCA(N_COMPONENTS, random_state=0).fit(bs.transform(b_train))
    y_train, y_val = pca.transform(bs.transform(b_train)), pca.transform(bs.transform(b_val))
    if standardise:
        gs = StandardScaler().fit(g_train)
        g_train, g_val = gs.transform(g_train), gs.transform(g_val)
    else:
        mu = g_train.mean(0)
        g_train, g_val = g_train - mu, g_val - mu
    best = None
    for alpha in ALPHAS:
        pred = Ridge(alpha=alpha).fit(g_train, y_train).predict(g_val)
        p = pred / np.linalg.norm(pred, axis=1, keepdims=True).clip(1e-12)
        y = y_val / np.linalg.norm(y_val, axis=1, keepdims=True).clip(1e-12)
        sim = p @ y.T  # (n_val, n_val): genome i -> brain j
        rank = (sim > np.diag(sim)[:, None]).sum(1)  # 0 = the subject's own brain is the best match
        res = {"alpha": alpha, "R@1": float((rank < 1).mean()), "R@5": float((rank < 5).mean())}
        if best is None or (res["R@5"], res["R@1"]) > (best["R@5"], best["R@1"]):
            best = res
    return best


def split_items(cfg, inputs, splits=("train", "val")) -> dict:
    subjects = inputs.cohort.subjects
    return {s: subjects[subjects["split"] == s] for s in splits}


def brain_features(cfg, inputs, rows) -> np.ndarray:
    enc = instantiate_with(cfg.brain.encoder, encoder_inputs(inputs.cohort, "brain", inputs.brain_transform))
    out = []
    with torch.inference_mode():
        for path in rows["fmri"].astype(str):
            out.append(enc(inputs.brain_transform(path, train=False)[None]).flatten(1))
    return torch.cat(out).double().numpy()


def genomics_items(transform, rows) -> list:
    return [transform(s) for s in rows["subject_id"].astype(str)]


def features(enc, items: list, batch: int = 32) -> np.ndarray:
    with torch.inference_mode():
        out = [enc(default_collate(items[k : k + batch])) for k in range(0, len(items), batch)]
    return torch.cat(out).double().numpy()


def caduceus_encoder(cfg, inputs, overrides: dict, store: dict | None):
    node = OmegaConf.merge(cfg.genomics.encoder, BASE, overrides)
    enc = instantiate_with(node, encoder_inputs(inputs.cohort, "genomics", inputs.genomics_transform))
    if store is not None:
        enc.embedder.forward = StoredEmbedder(store)  # the identity (enc.embedder.backbone) is untouched
        enc.cache_dir = None  # no disk writes while probing
    return enc


def fill_cache(cfg, inputs, overrides: dict, store: dict, items: dict) -> str:
    """Store the pooled embeddings of `overrides` for every subject of `items` in the run's disk cache."""
    enc = caduceus_encoder(cfg, inputs, overrides, store)
    enc.cache_dir = cfg.genomics.encoder.cache_dir
    if getattr(enc, "site_norm", False):
        enc.fit(items["train"])  # as the module's on_fit_start: the training subjects only
    for split_items_ in items.values():
        features(enc, split_items_)
    return f"{len(enc.disk_cache())} pooled embeddings in {enc.disk_cache().root}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("GENOBRAIN_ROOT", "."), help="paths.root_dir of the runs")
    ap.add_argument("--no-fill", action="store_true", help="do not store the best setting's embeddings")
    ap.add_argument("--out", default=str(HERE / "probe"), help="results stem")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(args.root).absolute()
    cfg = compose_run("caduceus_tiny", root)
    inputs = build_inputs(cfg)
    t = inputs.genomics_transform
    splits = ("train", "val", "test")  # test: genomes only, embedded for the cache fill; never scored
    rows = split_items(cfg, inputs, splits)
    base = caduceus_encoder(cfg, inputs, {}, None)
    items = {s: genomics_items(t, rows[s]) for s in splits}
    seqs = [x for s in splits for item in items[s] for x in item["ids"].flatten(0, 1)]
    seqs += list(base.reference_ids)
    print(f"{len(seqs)} sequences; embedding the distinct ones", flush=True)
    store = embed_tokens(base.embedder, seqs)
    b_train, b_val = (brain_features(cfg, inputs, rows[s]) for s in ("train", "val"))
    results = []
    for name, overrides, standardise in SETTINGS:
        t0 = time.perf_counter()
        enc = caduceus_encoder(cfg, inputs, overrides, store)
        if getattr(enc, "site_norm", False):
            enc.fit(items["train"])
        g_train, g_val = (features(enc, items[s]) for s in ("train", "val"))
        res = {"setting": name, "overrides": overrides, "input_norm": standardise, "dim": g_train.shape[1]}
        res |= probe(g_train, g_val, b_train, b_val, standardise)
        print(json.dumps(res | {"s": round(time.perf_counter() - t0, 1)}), flush=True)
        results.append(res)
    ranked = sorted(results, key=lambda r: (r["R@5"], r["R@1"]), reverse=True)
    filled = []
    if not args.no_fill:  # the two best windows' site embeddings (the cache is per window, not per head setting)
        for r in ranked:
            key = (r["overrides"].get("pool", "mean") == "mean", r["overrides"].get("window", 0))
            if key not in [f[0] for f in filled] and len(filled) < 2:
                filled.append((key, r["setting"], fill_cache(cfg, inputs, r["overrides"], store, items)))
                print(f"filled the cache for {r['setting']}: {filled[-1][2]}", flush=True)
    del store
    for genomics in ("kmer", "dosage"):  # calibration: the baselines' features through the same probe
        c = compose_run(genomics, root)
        inp = build_inputs(c)
        enc = instantiate_with(c.genomics.encoder, encoder_inputs(inp.cohort, "genomics", inp.genomics_transform))
        g_train, g_val = (features(enc, genomics_items(inp.genomics_transform, rows[s])) for s in ("train", "val"))
        res = {"setting": f"genomics={genomics}", "overrides": {}, "input_norm": True, "dim": g_train.shape[1]}
        res |= probe(g_train, g_val, b_train, b_val, True)
        print(json.dumps(res), flush=True)
        results.append(res)
    out = Path(args.out)
    n_val = len(rows["val"])
    lines = [
        "# Linear probe of genomics features on the demo cohort's validation split",
        "",
        f"Ridge from genomics features to the top {N_COMPONENTS} principal components of brain=fc features, fitted on "
        f"the {len(rows['train'])} training subjects; genome->brain retrieval among the {n_val} validation subjects "
        f"(chance R@1 = {1 / n_val:.3f}); alpha picked on validation from {list(ALPHAS)}. Command: "
        "`python experiments/comparisons/pooling/probe.py`.",
        "",
        "| setting | features | input standardised | alpha | val g2b R@1 | val g2b R@5 |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['setting']} | {r['dim']} | {r['input_norm']} | {r['alpha']:g} | {r['R@1']:.3f} | {r['R@5']:.3f} |"
        for r in results
    ]
    lines += ["", "Disk cache filled (every subject's genome; no brain read) for: "
              + "; ".join(f"{name} ({what})" for _, name, what in filled)]  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps({"results": results, "filled": [f[1] for f in filled]}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
