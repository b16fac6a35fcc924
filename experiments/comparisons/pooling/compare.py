"""The three genomics encoders side by side on the demo cohort, over seeds (issue 9): k-mer, dosage, tiny Caduceus.

    python experiments/comparisons/pooling/compare.py                      # 3 encoders x seeds 0 1 2, then the table
    python experiments/comparisons/pooling/compare.py --only caduceus --seeds 0
    python experiments/comparisons/pooling/compare.py --variant 'diff_w4=genomics.encoder.window=4' --only diff_w4
    python experiments/comparisons/pooling/compare.py --table-only         # rebuild the table from finished runs

Each run is `python -m fusion.train <overrides> seed=S` (the commands are in the results), in its own run folder
<root>/runs/<name>_s<S> (hydra.run.dir; root = --root or $GENOBRAIN_ROOT); a finished run (test metrics in its csv
log) is not run again, so the script resumes, and a run another compare.py is doing (<name>_s<S>.pid, a live process)
is waited for, so several can run side by side. Reported per encoder, mean +- sample SD over the seeds: test
genome->brain and brain->genome R@1 / R@5 (the best checkpoint by val/g2b/R@5, as fusion.train tests it) and the
validation metrics of that checkpoint. Selection of
the Caduceus pooling used VALIDATION metrics only (variants: `--variant NAME=OVERRIDES`, reported with their
validation metrics and, for transparency, their test metrics under a separate heading). Writes results.{md,json}
next to this file (or --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
ENCODERS = {  # name -> fusion.train overrides (the published demo commands)
    "kmer": ["experiment=demo"],
    "dosage": ["experiment=demo", "genomics=dosage"],
    "caduceus": ["experiment=demo_caduceus"],
}
KEYS = ("g2b/R@1", "g2b/R@5", "b2g/R@1", "b2g/R@5")
MONITOR = "val/g2b/R@5"  # optimized_metric of configs/train.yaml: the checkpoint fusion.train tests


def command(overrides: list[str], seed: int) -> list[str]:
    return [sys.executable, "-m", "fusion.train", *overrides, f"seed={seed}"]


def read_metrics(run_dir: Path) -> dict | None:
    """Test metrics and the validation metrics of the best epoch (first maximum of MONITOR) from the csv log."""
    logs = sorted(run_dir.glob("csv/version_*/metrics.csv"))
    if not logs:
        return None
    with open(logs[-1]) as fh:
        rows = list(csv.DictReader(fh))
    test = [r for r in rows if r.get("test/g2b/R@1")]
    val = [r for r in rows if r.get(MONITOR)]
    if not test or not val:
        return None
    best = max(val, key=lambda r: float(r[MONITOR]))  # max() keeps the first of equal values, as ModelCheckpoint
    out = {f"test/{k}": float(test[-1][f"test/{k}"]) for k in KEYS}
    out |= {f"val/{k}": float(best[f"val/{k}"]) for k in KEYS}
    out["best_epoch"] = int(float(best["epoch"]))
    return out


def run(name: str, overrides: list[str], seed: int, root: Path) -> dict:
    run_dir = root / "runs" / f"{name}_s{seed}"
    done = read_metrics(run_dir)
    cmd = command(overrides, seed)
    lock = root / "runs" / f"{name}_s{seed}.pid"  # another compare.py (or a run started by hand) owns this run
    while done is None and lock.exists() and _alive(int(lock.read_text() or 0)):
        time.sleep(30)
        done = read_metrics(run_dir)
    if done is None:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
        extra = [f"hydra.run.dir={run_dir}", "+trainer.enable_progress_bar=false"]
        log = root / "runs" / f"{name}_s{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0, load0 = time.time(), os.getloadavg()[0]
        with open(log, "w") as fh:
            subprocess.run([*cmd, *extra], cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "GENOBRAIN_ROOT": str(root)})  # fmt: skip
        (run_dir / "wall.json").write_text(
            json.dumps({"wall_s": time.time() - t0, "load_before": load0, "load_after": os.getloadavg()[0]})
        )
        done = read_metrics(run_dir)
        lock.unlink(missing_ok=True)
        if done is None:
            raise RuntimeError(f"{name} seed {seed}: no test metrics in {run_dir} (see {log})")
    wall = run_dir / "wall.json"
    done |= json.loads(wall.read_text()) if wall.exists() else {}
    done["command"] = " ".join(["python", "-m", "fusion.train", *overrides, f"seed={seed}"])
    print(f"{name} seed {seed}: " + ", ".join(f"{k}={v:.3f}" for k, v in done.items() if k.startswith(("test", "val"))),
          flush=True)  # fmt: skip
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return pid > 0


def summary(runs: list[dict]) -> dict:
    out = {}
    for k in [f"{s}/{key}" for s in ("test", "val") for key in KEYS]:
        vals = [r[k] for r in runs]
        out[k] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else math.nan}
    return out


def fmt(s: dict) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def markdown(res: dict) -> str:
    lines = [
        "# Genomics encoders on the demo cohort (issue 9): k-mer vs dosage vs tiny Caduceus",
        "",
        f"Seeds {res['seeds']} (top-level `seed`: training randomness; the demo cohort and its splits are fixed, "
        f"45 test and 45 validation subjects, chance R@1 = 0.022). Mean ± sample SD over seeds; the test checkpoint "
        f"is the best by {MONITOR}. Caduceus default: {res['caduceus_default']}. Machine: {res['machine']}.",
        "",
        "| encoder | test g2b R@1 | test g2b R@5 | test b2g R@1 | test b2g R@5 | val g2b R@1 | val g2b R@5 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["encoders"].items():
        s = r["summary"]
        lines.append(
            f"| {name} | {fmt(s['test/g2b/R@1'])} | {fmt(s['test/g2b/R@5'])} | {fmt(s['test/b2g/R@1'])} | "
            f"{fmt(s['test/b2g/R@5'])} | {fmt(s['val/g2b/R@1'])} | {fmt(s['val/g2b/R@5'])} |"
        )
    if res["variants"]:
        lines += ["", "Caduceus variants tried while tuning (selected on the validation columns only):", "",
                  "| variant | overrides | seeds | val g2b R@1 | val g2b R@5 | test g2b R@1 | test g2b R@5 |",
                  "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in res["variants"].items():
            s = r["summary"]
            lines.append(
                f"| {name} | `{' '.join(r['overrides'])}` | {r['seeds']} | {fmt(s['val/g2b/R@1'])} | "
                f"{fmt(s['val/g2b/R@5'])} | {fmt(s['test/g2b/R@1'])} | {fmt(s['test/g2b/R@5'])} |"
            )
    lines += ["", "Per run:", "", "| command | test g2b R@1 | test g2b R@5 | test b2g R@1 | test b2g R@5 | "
              "val g2b R@5 | best epoch | wall s | load |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for group in ("encoders", "variants"):
        for r in res[group].values():
            for x in r["runs"]:
                lines.append(
                    f"| `{x['command']}` | {x['test/g2b/R@1']:.3f} | {x['test/g2b/R@5']:.3f} | {x['test/b2g/R@1']:.3f} "
                    f"| {x['test/b2g/R@5']:.3f} | {x['val/g2b/R@5']:.3f} | {x['best_epoch']} | "
                    f"{x.get('wall_s', math.nan):.0f} | {x.get('load_before', math.nan):.1f}-"
                    f"{x.get('load_after', math.nan):.1f} |"
                )
    return "\n".join(lines) + "\n"


def caduceus_default() -> str:
    """genomics=caduceus_tiny's pooling settings as composed (configs/genomics/pooling/<its default>.yaml)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        g = compose("genomics/caduceus_tiny").genomics
    keys = ("pool", "window", "site_pool", "site_norm")
    return ", ".join(f"{k}={g.encoder[k]}" for k in keys if k in g.encoder) + f", head.input_norm={g.head.input_norm}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", default=None, help="run only these encoders / variants")
    ap.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE[,OVERRIDE...] (Caduceus tuning)")
    ap.add_argument("--root", default=os.environ.get("GENOBRAIN_ROOT"), help="paths.root_dir (caches, runs)")
    ap.add_argument("--table-only", action="store_true", help="no new runs: the table from the finished ones")
    ap.add_argument("--out", default=str(HERE / "results"), help="results stem")
    args = ap.parse_args(argv)
    if not args.root:
        ap.error("give --root (or set GENOBRAIN_ROOT): runs, the demo cohort and the embedding cache go there")
    root = Path(args.root).absolute()
    variants = {}
    for v in args.variant:
        name, _, rest = v.partition("=")
        variants[name] = ENCODERS["caduceus"] + rest.split(",")
    res = {"seeds": args.seeds, "caduceus_default": caduceus_default(), "encoders": {}, "variants": {},
           "machine": f"{os.cpu_count()} CPUs (shared), load at start {os.getloadavg()[0]:.1f}"}  # fmt: skip
    for group, table in (("encoders", ENCODERS), ("variants", variants)):
        for name, overrides in table.items():
            if args.only and name not in args.only and not args.table_only:
                continue
            runs = []
            for seed in args.seeds:
                run_dir = root / "runs" / f"{name}_s{seed}"
                if args.table_only:
                    m = read_metrics(run_dir)
                    if m is None:
                        continue
                    wall = run_dir / "wall.json"
                    m |= json.loads(wall.read_text()) if wall.exists() else {}
                    m["command"] = " ".join(["python", "-m", "fusion.train", *overrides, f"seed={seed}"])
                    runs.append(m)
                else:
                    runs.append(run(name, overrides, seed, root))
            if runs:
                res[group][name] = {"overrides": overrides, "seeds": [int(r["command"].split("seed=")[-1]) for r in
                                    runs], "runs": runs, "summary": summary(runs)}  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
