"""The frozen-feature cache (fusion.feature_cache): first and second run of one experiment, and heads-only training.

    python experiments/benchmarks/bench_feature_cache.py [--subjects 1000] [--epochs 30] [--uncached]
                                                         [--projector-subjects 10000] [--projector-epochs 10]

(a) `experiment=demo` (genomics=kmer, brain=fc: both towers fixed, cached under feature_cache.enabled=auto) on a
    generated demo cohort of --subjects subjects (generated beforehand into $GENOBRAIN_CACHE, not timed), run twice
    in this process with a fresh feature store: run 1 computes every subject's features in the pre-pass (cold),
    run 2 reads them (warm). Per run: wall seconds of fusion.train.train (fit + test + the test-stage evaluation),
    seconds in the cache's prepare (hashing, reading, computing), subjects computed / read. --uncached adds a run
    with feature_cache.enabled=false (the transforms run every epoch), the cost the cache removes.
(b) Projector-only training on cached features: random float32 tensors of --projector-subjects subjects at the demo
    encoders' widths (k-mer 16 regions x 136 = 2,176; FC on 264 parcels = 34,716), written to a store in the real
    format (genomics.embedding_cache.EmbeddingCache shards), read back as FeatureTables, then the real heads
    (configs/head/projection.yaml; brain with fc.yaml's hidden_dim 256), loss (CLIP) and AlignmentModule are trained
    by a Lightning Trainer for --projector-epochs epochs of data.batch_size=32 (no validation).
Timing is wall time on a shared machine (other jobs run: the load average at start and end is recorded); numbers are
indicative. Results: experiments/benchmarks/results/feature_cache.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "benchmarks" / "results"
WIDTHS = {"genomics": 16 * 136, "brain": 264 * 263 // 2}  # demo k-mer (16 regions, k=4 canonical) and FC widths


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        cpu = platform.processor()
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def compose(overrides: list[str], out: Path, cache_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import fusion.train  # noqa: F401  (resolvers)
    from fusion.app import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent / "logs")
        cfg.paths.cache_dir = cache_dir
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        del cfg.hydra
    return cfg


def runs(args, work: Path) -> list[dict]:
    from omegaconf import open_dict

    from fusion.app.cohort_source import resolve_cohort
    from fusion.train import train

    cache_dir = os.environ.get("GENOBRAIN_CACHE", str(work / "cache"))
    base = ["experiment=demo", f"demo.n_subjects={args.subjects}", f"trainer.max_epochs={args.epochs}"]
    start = time.perf_counter()
    resolve_cohort(compose(base, work / "gen", cache_dir))  # the demo cohort, generated once (not timed below)
    generated = time.perf_counter() - start
    store = work / "store"
    plan = [("first (cold store)", []), ("second (warm store)", [])]
    if args.uncached:
        plan.append(("uncached (feature_cache.enabled=false)", ["feature_cache.enabled=false"]))
    out = []
    for i, (name, extra) in enumerate(plan):
        cfg = compose(base + extra, work / f"run{i}", cache_dir)
        with open_dict(cfg):
            cfg.feature_cache.dir = str(store)
        start = time.perf_counter()
        metrics, objs = train(cfg)
        wall = time.perf_counter() - start
        cache = objs["datamodule"].feature_cache
        stats = cache.stats if cache is not None else {}
        out.append(
            {
                "run": name,
                "wall_s": round(wall, 1),
                "features_s": round(sum(s["seconds"] for s in stats.values()), 1),
                "stats": stats,
                "epochs": int(objs["trainer"].current_epoch),
                "splits": objs["datamodule"].split_sizes(),
                "test/g2b/R@1": metrics.get("test/g2b/R@1"),
                "generated_s": round(generated, 1) if i == 0 else None,
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


class _Features(torch.utils.data.Dataset):
    def __init__(self, tables: dict, names: list[str]):
        self.tables, self.names = tables, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        n = self.names[i]
        return {"index": i, "genomics": self.tables["genomics"](n), "brain": self.tables["brain"](n)}


class _Fixed(torch.nn.Module):
    """A stand-in encoder of the given width: never called (the towers read features)."""

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim


def projector(args, work: Path) -> dict:
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from fusion.app.module import AlignmentModule
    from fusion.feature_cache import FeatureTable
    from fusion.losses import ClipLoss
    from fusion.model import AlignmentModel
    from genomics.embedding_cache import EmbeddingCache, content_key

    n = args.projector_subjects
    names = [f"sub-{i:05d}" for i in range(n)]
    keys = [content_key("bench", s) for s in names]
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    tables = {}
    for modality, width in WIDTHS.items():
        store = EmbeddingCache.under(work / "projector_store", content_key("bench-encoder", modality))
        for lo in range(0, n, 1000):  # shards of 1,000 subjects, as the pre-pass flushes
            store.put_many({k: torch.randn(width, generator=g) for k in keys[lo : lo + 1000]})
    made = time.perf_counter() - start
    start = time.perf_counter()
    for modality in WIDTHS:
        store = EmbeddingCache.under(work / "projector_store", content_key("bench-encoder", modality))
        found = store.get_many(keys)
        tables[modality] = FeatureTable(names, torch.stack([found[k] for k in keys]))
        del found
    read = time.perf_counter() - start

    head = OmegaConf.load(ROOT / "configs" / "head" / "projection.yaml")
    head.out_dim = 512  # model.embed_dim
    brain_head = OmegaConf.merge(head, {"hidden_dim": 256})  # configs/brain/fc.yaml
    encoders = (_Fixed(WIDTHS["genomics"]), _Fixed(WIDTHS["brain"]))
    net = AlignmentModel(*encoders, instantiate(head), instantiate(brain_head))
    net.genomics.precomputed = net.brain.precomputed = True
    model_cfg = OmegaConf.load(ROOT / "configs" / "model" / "clip.yaml")
    module = AlignmentModule(
        net,
        ClipLoss(),
        instantiate(model_cfg.optimizer),
        instantiate(model_cfg.scheduler),
        weight_decay=model_cfg.weight_decay,
    )
    loader = torch.utils.data.DataLoader(
        _Features(tables, names), batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator()
    )
    epoch_s: list[float] = []

    class EpochTimes(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            epoch_s.append(round(time.perf_counter() - self.t, 1))

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=args.projector_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
        callbacks=[EpochTimes()],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    fit = time.perf_counter() - start
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    out = {
        "subjects": n,
        "widths": WIDTHS,
        "epochs": args.projector_epochs,
        "steps": int(trainer.global_step),
        "trainable_params": params,
        "make_store_s": round(made, 1),
        "read_store_s": round(read, 1),
        "fit_s": round(fit, 1),
        "epoch_s": epoch_s,
        "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
    }
    print(json.dumps(out), flush=True)
    return out


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "feature_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    m = result["machine"]
    lines = [
        "# Frozen-feature cache benchmark",
        "",
        f"`{result['command']}`; {m['cpu']}, {m['cpus']} CPUs visible, torch {m['torch']} with {m['torch_threads']} "
        f"threads. Load average at start {result['load_start']}, at end {result['load_end']} (on a shared machine "
        f"wall times are indicative).",
        "",
    ]
    if result.get("runs"):
        a = result["runs"]
        lines += [
            f"## (a) experiment=demo (kmer x fc), {result['args']['subjects']} demo subjects, "
            f"trainer.max_epochs={result['args']['epochs']}",
            "",
            f"Cohort generated beforehand in {a[0]['generated_s']} s (not counted). Splits: {a[0]['splits']}.",
            "",
            "| run | wall s | in feature cache s | share | computed (g / b) | read (g / b) | epochs | test g2b R@1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in a:
            st = r["stats"]
            comp = " / ".join(str(st.get(k, {}).get("computed", "-")) for k in ("genomics", "brain"))
            read = " / ".join(str(st.get(k, {}).get("cached", "-")) for k in ("genomics", "brain"))
            share = f"{r['features_s'] / r['wall_s']:.0%}" if r["wall_s"] else "-"
            lines.append(
                f"| {r['run']} | {r['wall_s']} | {r['features_s']} | {share} | {comp} | {read} | {r['epochs']} "
                f"| {r['test/g2b/R@1']:.3f} |"
            )
        lines += [
            "",
            "'in feature cache' = the pre-pass (hashing every subject's files, reading the store, computing what is "
            "missing). The rest of the wall time is the heads' training, validation, test and the test-stage "
            "evaluation (probes, CCA/PLS), which the cache does not change.",
            "",
        ]
    if result.get("projector"):
        p = result["projector"]
        lines += [
            f"## (b) Projector-only training on cached features of {p['subjects']} subjects",
            "",
            f"Random float32 features at the demo widths {p['widths']} in the store's format (shards of 1,000): "
            f"made in {p['make_store_s']} s, read back in {p['read_store_s']} s. Heads as configured "
            f"({p['trainable_params']:,} trainable parameters), CLIP loss, AdamW, batch 32: {p['epochs']} epochs "
            f"({p['steps']} steps) in **{p['fit_s']} s** (per epoch: {p['epoch_s']} s).",
            "",
        ]
    if result.get("note"):
        lines += [result["note"], ""]
    (RESULTS / "feature_cache.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--uncached", action="store_true", help="also a run with feature_cache.enabled=false")
    parser.add_argument("--projector-subjects", type=int, default=10_000)
    parser.add_argument("--projector-epochs", type=int, default=10)
    parser.add_argument("--skip", choices=["runs", "projector"], default=None)
    parser.add_argument("--note", default="", help="a sentence added to the results file")
    args = parser.parse_args()
    result = {
        "command": " ".join(["python", *sys.argv]),
        "args": vars(args),
        "machine": machine(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="bench_feature_cache_") as tmp:
        work = Path(tmp)
        if args.skip != "runs":
            result["runs"] = runs(args, work)
        if args.skip != "projector":
            result["projector"] = projector(args, work)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["note"] = args.note
    write(result)


if __name__ == "__main__":
    main()
