"""Cost of confound regression per subject in the parcel transforms (brain.parcellation.ParcelTimeSeries).

    python experiments/benchmarks/bench_confounds.py [--subjects 4] [--repeats 5]

Demo scale: the generated demo cohort (nilearn's Power-2011 264 spheres, 4 mm grid, 150 volumes, TR 2 s) written as
fMRIPrep derivatives (fusion.demo.fmriprep: confounds TSV + JSON, brain mask), one run per subject. Per subject and
strategy: the parcel extraction (NiftiLabelsMasker on the NIfTI; the same with or without confounds), with the run's
brain mask (a masker per run) and without; reading the confounds (load_confounds_strategy through brain.confounds),
and the regression (nilearn.signal.clean of the (T, P) series with the confounds, detrend, sample_mask). UK Biobank
scale for the two confound steps alone (they never touch voxels): 490 volumes x 424 parcels, TR 0.735 s. Timing:
wall seconds (perf_counter) and CPU seconds of this process (process_time), the median over repeats; the machine is
shared, so the load average is recorded. Results: experiments/benchmarks/results/confounds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "benchmarks" / "results"
STRATEGIES = ("simple", "scrubbing", "compcor")


def timed(repeats: int, fn, *args, **kwargs):
    """(median wall s, median CPU s, last result) of fn(*args, **kwargs)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus)), out


def main() -> None:
    import pandas as pd
    from nilearn.signal import clean

    from brain.confounds import load_confounds
    from brain.parcellation import ParcelTimeSeries
    from brain.scans import Run, Scan
    from fusion.demo import generate_demo_cohort
    from fusion.demo.fmriprep import confounds_table, fmriprep_from_demo
    from fusion.manifest import build_manifest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = generate_demo_cohort(Path(tmp) / "demo", n_subjects=args.subjects, n_volumes=150)
        root = fmriprep_from_demo(demo["manifest"].parent, Path(tmp) / "derivatives", runs=1, artefact=0.5)
        table, _ = build_manifest(root, Path(tmp) / "manifest.csv")
        base = Path(tmp)
        for _, row in table.iterrows():
            run = Run(str(base / row["fmri"]), str(base / row["confounds"]), str(base / row["mask"]), 2.0, 150)
            scans = {run.path: Scan(row["subject_id"], (run,))}
            bare = {run.path: Scan(row["subject_id"], (Run(run.path, t_r=2.0, n_volumes=150),))}
            plain = ParcelTimeSeries(str(demo["atlas"]), standardize=False, cache=False, scans=bare)
            plain.run_series(run.path)  # the masker fitted once (shared by all subjects)
            w, c, series = timed(args.repeats, plain.run_series, run.path)
            series = series[0]
            rows.append({"scale": "demo", "subject": row["subject_id"], "step": "parcel extraction", "wall_s": w,
                         "cpu_s": c})  # fmt: skip
            masked = ParcelTimeSeries(str(demo["atlas"]), standardize=False, cache=False, scans=scans)
            w, c, _ = timed(args.repeats, masked._raw, run)
            rows.append({"scale": "demo", "subject": row["subject_id"], "step": "parcel extraction, brain mask",
                         "wall_s": w, "cpu_s": c})  # fmt: skip
            for strategy in STRATEGIES:
                w, c, (conf, mask) = timed(args.repeats, load_confounds, run.confounds, strategy, 150)
                rows.append({"scale": "demo", "subject": row["subject_id"], "step": f"read confounds ({strategy})",
                             "wall_s": w, "cpu_s": c, "regressors": conf.shape[1],
                             "kept": 150 if mask is None else len(mask)})  # fmt: skip
                w, c, _ = timed(args.repeats, clean, series, confounds=conf, sample_mask=mask, detrend=True,
                                standardize=None, t_r=2.0)  # fmt: skip
                rows.append({"scale": "demo", "subject": row["subject_id"], "step": f"regression ({strategy})",
                             "wall_s": w, "cpu_s": c})  # fmt: skip
        # UK Biobank scale: 490 x 424, the confound steps only
        rng = np.random.default_rng(0)
        conf_table, sidecar = confounds_table(rng, 490, 0.735, spikes=(100, 300))
        tsv = base / "ukb_desc-confounds_timeseries.tsv"
        conf_table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
        tsv.with_suffix(".json").write_text(json.dumps(sidecar))
        series = rng.normal(0, 1, (490, 424)).astype(np.float32)
        for strategy in STRATEGIES:
            w, c, (conf, mask) = timed(args.repeats, load_confounds, tsv, strategy, 490)
            kept = 490 if mask is None else len(mask)
            rows.append({"scale": "ukb", "subject": "synthetic", "step": f"read confounds ({strategy})", "wall_s": w,
                         "cpu_s": c, "regressors": conf.shape[1], "kept": kept})  # fmt: skip
            w, c, _ = timed(args.repeats, clean, series, confounds=conf, sample_mask=mask, detrend=True,
                            standardize=None, t_r=0.735)  # fmt: skip
            rows.append({"scale": "ukb", "subject": "synthetic", "step": f"regression ({strategy})", "wall_s": w,
                         "cpu_s": c})  # fmt: skip
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["scale", "step"], sort=False)[["wall_s", "cpu_s"]].median().reset_index()
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "load_average_1m": load,
            "torch_threads": None, "repeats": args.repeats, "subjects": args.subjects}  # fmt: skip
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "confounds.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    lines = [f"# Confound regression cost per subject ({info['cpu']}, {info['cores']} cores, load {load:.1f})", "",
             "| scale | step | wall s | CPU s |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r.scale} | {r.step} | {r.wall_s:.4f} | {r.cpu_s:.4f} |" for r in summary.itertuples()]
    (RESULTS / "confounds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
