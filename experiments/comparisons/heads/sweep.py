"""Head regularisation sweep on the demo cohort (k-mer vs FC, 300 subjects: 210 train / 45 val / 45 test).

    python experiments/comparisons/heads/sweep.py select --out DIR [--seeds 0] [--only NAME ...]
        every candidate below (or those named); ranked by validation metrics at the selected epoch (early stopping on
        optimized_metric, val/g2b/R@5), mean over the seeds run
    python experiments/comparisons/heads/sweep.py final --out DIR --candidates baseline,NAME [--seeds 0 1 2]
        more seeds of the named candidates (before / after; their test metrics are the only ones the report shows)
    python experiments/comparisons/heads/sweep.py report --out DIR
        -> results.md and results.json beside this file

Each run is `python -m fusion.train <overrides> seed=S` composed in-process (the command is recorded with its row),
with the test stage of the evaluation callback (bootstrap interval of test R@1; probes and CCA/PLS off). The test
metrics are recorded for the before/after report and never read by the ranking, which uses validation only.
Finished runs are kept as DIR/records/<name>__seed<S>.json, so a killed sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
# name -> overrides (both towers' heads unless named); the defaults these were run against are the "before" column
CANDIDATES: dict[str, list[str]] = {
    "baseline": [],
    "linear": ["genomics.head.hidden_dim=null", "brain.head.hidden_dim=null"],
    "noise0.5": ["genomics.head.input_noise=0.5", "brain.head.input_noise=0.5"],
    "in_dropout0.5": ["genomics.head.input_dropout=0.5", "brain.head.input_dropout=0.5"],
    "linear+noise0.5": [
        "genomics.head.hidden_dim=null",
        "brain.head.hidden_dim=null",
        "genomics.head.input_noise=0.5",
        "brain.head.input_noise=0.5",
    ],
    "dropout0.5": ["genomics.head.dropout=0.5", "brain.head.dropout=0.5"],
    "narrow": ["genomics.head.hidden_dim=128", "brain.head.hidden_dim=64"],
    "wd1.0": ["model.weight_decay=1.0"],
}
VAL = ["val/g2b/R@1", "val/g2b/R@5", "val/b2g/R@1", "val/b2g/R@5", "val/g2b/mean_rank", "val/b2g/mean_rank", "val/loss"]
TEST = ["test/g2b/R@1", "test/g2b/R@1_lo", "test/g2b/R@1_hi", "test/b2g/R@1", "test/g2b/R@5", "test/b2g/R@5"]
COMMON = ["+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
RUN = [*COMMON, "callbacks.evaluation.probes=false", "callbacks.evaluation.linear_baselines=[]"]


def compose(overrides: list[str], run_dir: Path):
    """train.yaml with overrides, as fusion.train's @hydra.main sees it, writing into run_dir."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fusion.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg.hydra
    return cfg


def selected_epoch_metrics(run_dir: Path, best_epoch: int) -> dict:
    """Validation metrics of the selected epoch, from the run's CSV log."""
    log = pd.read_csv(next((run_dir / "csv").rglob("metrics.csv")))
    rows = log[(log["epoch"] == best_epoch) & log["val/g2b/R@1"].notna()]
    return {k: float(rows[k].iloc[-1]) for k in VAL}


def run(out: Path, name: str, seed: int) -> dict:
    from fusion.train import train

    record_path = out / "records" / f"{name}__seed{seed}.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    overrides = [*CANDIDATES[name], f"seed={seed}", *RUN]
    run_dir = out / "runs" / f"{name}__seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    metrics, objs = train(compose(overrides, run_dir))
    best = int(metrics["best_epoch"])
    record = {
        "name": name,
        "seed": seed,
        "command": "python -m fusion.train " + " ".join([*CANDIDATES[name], f"seed={seed}"]),
        "best_epoch": best,
        "epochs_trained": int(objs["trainer"].current_epoch),
        "wall_s": round(time.perf_counter() - start, 1),
        "params": sum(p.numel() for p in objs["model"].parameters() if p.requires_grad),
        **selected_epoch_metrics(run_dir, best),
        **{k: float(metrics[k]) for k in TEST if k in metrics},
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    print(json.dumps(record), flush=True)
    return record


def load(out: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))])


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over the seeds every candidate ran (the selection's) per candidate, ranked by val/g2b/R@5
    (optimized_metric), then val mean ranks (lower first)."""
    common = set.intersection(*(set(group["seed"]) for _, group in table.groupby("name")))
    table = table[table["seed"].isin(common)]
    agg = table.groupby("name").agg(
        seeds=("seed", "count"),
        params=("params", "first"),
        best_epoch=("best_epoch", "mean"),
        epochs=("epochs_trained", "mean"),
        wall_s=("wall_s", "mean"),
        **{k: (k, "mean") for k in VAL},
    )
    agg["val/mean_rank"] = (agg["val/g2b/mean_rank"] + agg["val/b2g/mean_rank"]) / 2
    return agg.sort_values(["val/g2b/R@5", "val/mean_rank"], ascending=[False, True])


def cell(value, column: str) -> str:
    """A table cell: counts as integers, everything else numeric with three decimals."""
    if column in ("seeds", "params"):
        return str(int(value))
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def md_table(df: pd.DataFrame, columns: list[str], index: str) -> str:
    lines = ["| " + " | ".join([index, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for key, row in df.iterrows():
        cells = [cell(row[c], c) for c in columns]
        lines.append("| " + " | ".join([str(key), *cells]) + " |")
    return "\n".join(lines)


def report(out: Path) -> None:
    runs = load(out)
    table = ranked(runs)
    best = table.index[0]
    sections = [
        "## Selection (validation only)",
        f"Validation picks `{best}` (highest val/g2b/R@5 at the selected epoch, then the lower mean rank).",
        md_table(table, list(table.columns), "candidate"),
    ]
    result = {"runs": runs.to_dict("records"), "ranked": table.reset_index().to_dict("records")}
    chosen = json.loads((out / "final.json").read_text()) if (out / "final.json").exists() else []
    final = runs[runs["name"].isin(chosen)]  # the candidates of the final stage (before / after)
    if len(final):
        cols = ["best_epoch", "epochs_trained", "wall_s", *TEST]
        sections += ["## Test (before/after, per seed)", md_table(final.set_index(["name", "seed"])[cols], cols, "run")]
        mean = final.groupby("name")[TEST].agg(["mean", "std"])
        mean.columns = [f"{a} {b}" for a, b in mean.columns]
        sections += ["## Test, mean (sd) over seeds", md_table(mean, list(mean.columns), "candidate")]
    commands = {name: "python -m fusion.train " + " ".join(o) for name, o in CANDIDATES.items()}
    sections += ["## Commands", "\n".join(f"- `{n}`: `{c} seed=S`" for n, c in commands.items())]
    result["commands"] = commands
    (HERE / "results.md").write_text("\n\n".join(sections) + "\n")
    (HERE / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["select", "final", "report"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", default=None, help="candidates to run (default: all)")
    parser.add_argument("--candidates", default="baseline", help="final: comma-separated candidates")
    args = parser.parse_args()
    out = args.out.resolve()
    if args.stage == "report":
        report(out)
        return
    names = args.only or list(CANDIDATES) if args.stage == "select" else args.candidates.split(",")
    if args.stage == "final":
        out.mkdir(parents=True, exist_ok=True)
        (out / "final.json").write_text(json.dumps(names))
    for seed in args.seeds:
        for name in names:
            run(out, name, seed)
    report(out)


if __name__ == "__main__":
    main()
