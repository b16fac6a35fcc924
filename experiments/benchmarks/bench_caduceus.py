"""Benchmark of whole Caduceus forwards on CPU (issue 13): the fused inference path against its matmul floor, the
module-by-module composition it replaced ("before") and the pure-PyTorch reference backend, same weights.

    python experiments/benchmarks/bench_caduceus.py              # the full run (~15 min on 2 cores)
    python experiments/benchmarks/bench_caduceus.py --quick      # sanity run at 1/16 of the lengths
    python experiments/benchmarks/bench_caduceus.py --profile    # where the time goes, by op (torch.profiler)

Models: the published 131k configs (d_model 256, 16 layers, BiMamba with tied in/out projections), random weights
(seed 0), inference under torch.inference_mode, 2 threads unless --threads:
  PS    Caduceus-PS backbone, one 131,072-token sequence, and a batch of 64 x 2,048
  PH    Caduceus-Ph conjoined (CaduceusEmbedder(conjoin=True): the sequence and its reverse complement)
  bf16  PS with the model and its input in bfloat16
variant "fused" is CaduceusMixerModel's fused path (the default); "before" is the composition
(`backbone.fused_inference = False`), i.e. the code before issue 13 (per-mixer kernels, flips, cats);
"torch" is the composition on ssm_backend="torch" (sequential pure PyTorch), run at 1 x 1,024 only (it is ~25x
slower). PH and bf16 have no "before" row unless --all-before. Each case runs in its own subprocess (its peak RSS,
getrusage, is its own); the forward is timed once after a warm-up at 1,024 tokens; outputs are compared to the
case's "before" (max |diff| / max |before|).
Matmul floor: the in_proj / x_proj / out_proj matmuls of the 64 mixers of the composition (16 layers x 2 strands x 2
directions) timed alone with torch on the same threads and dtype, each at the case's B * L rows (the faster of one
call and 8,192-row tiles); "executed floor" is the matmuls the fused path issues (in_proj and out_proj once per strand,
x_proj per direction: 2 + 4 + 2 per layer instead of 4 + 4 + 4). Load: the 1-minute load average before-after each
case (2 cores shared with other jobs); cpu s = the subprocess's CPU time.
Writes results/caduceus[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"ps": "caduceus-ps_seqlen-131k_d_model-256_n_layer-16", "ph": "caduceus-ph_seqlen-131k_d_model-256_n_layer-16"}
D_MODEL, D_INNER, XPROJ, N_LAYER = 256, 512, 48, 16


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _build(case: dict):
    """(forward callable, ids, model) of a case: backbone for PS, conjoined embedder for PH."""
    import torch

    from genomics.caduceus.config import CaduceusConfig
    from genomics.caduceus.embedding import CaduceusEmbedder
    from genomics.caduceus.modeling import Caduceus

    torch.manual_seed(0)
    backend = "torch" if case["variant"] == "torch" else "cpu"
    model = Caduceus(CaduceusConfig.published(NAMES[case["model"]], ssm_backend=backend)).eval()
    with torch.no_grad():  # move away from the init values (A = -[1..N], D = 1, unit norms) so every weight matters
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if name.endswith(("A_log", ".D", "norm.weight", "norm_f.weight")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32
    model = model.to(dtype)
    model.backbone.fused_inference = case["variant"] == "fused"
    ids = torch.randint(0, 4, (case["B"], case["L"]), generator=torch.Generator().manual_seed(2)) + 7  # A C G T
    if case["model"] == "ph":
        embedder = CaduceusEmbedder(model, conjoin=True).eval()
        return embedder, ids, model
    return (lambda x: model(x).last_hidden_state), ids, model


def run_case(case: dict, out_dir: Path) -> dict:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    if case["kind"] == "floor":
        return _run_floor(case)
    fwd, ids, model = _build(case)
    rss0 = _rss_mib()
    with torch.inference_mode():
        fwd(ids[:1, :1024])  # JIT cache load / warm-up
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        out = fwd(ids)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert torch.isfinite(out.float()).all()
    torch.save(out, out_dir / f"{case['id']}.pt")
    tokens = ids.numel()
    return dict(case, wall_s=wall, cpu_s=cpu, tokens=tokens, tokens_per_s=tokens / wall, peak_mib=_peak_mib(),
                work_mib=_peak_mib() - rss0, threads=torch.get_num_threads(), load_start=round(load0, 2))  # fmt: skip


def _run_floor(case: dict) -> dict:
    """Seconds of each matmul of one mixer at M = B * L rows (best of one call and 8,192-row tiles, best of 3)."""
    import torch

    dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32
    M = case["rows"]
    g = torch.Generator().manual_seed(0)
    shapes = {"in_proj": (D_MODEL, 2 * D_INNER), "x_proj": (D_INNER, XPROJ), "out_proj": (D_INNER, D_MODEL)}
    res = dict(case)
    for name, (k, n) in shapes.items():
        x = torch.randn(M, k, generator=g).to(dtype)
        w = torch.randn(n, k, generator=g).to(dtype)
        out = torch.empty(M, n, dtype=dtype)
        best = float("inf")
        for tile in (M, 8192):
            torch.mm(x[:tile], w.t(), out=out[:tile])  # warm-up
            for _ in range(3):
                t = time.perf_counter()
                for r0 in range(0, M, tile):
                    torch.mm(x[r0 : r0 + tile], w.t(), out=out[r0 : r0 + tile])
                best = min(best, time.perf_counter() - t)
        res[name + "_s"] = best
        del x, out
    return res


# ----------------------------------------------------------------------------------------------------- driver


def _spawn(case: dict, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--_case", json.dumps(case), "--_out", str(out_dir)]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    load = dict(load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
    if proc.returncode != 0:
        return dict(case, error=(proc.stderr or proc.stdout)[-2000:], returncode=proc.returncode, **load)
    return json.loads(proc.stdout.strip().splitlines()[-1]) | load


def plan(quick: bool, threads: int, all_before: bool) -> tuple[list[dict], list[dict]]:
    """(model cases, floor cases)."""
    s = 16 if quick else 1
    L, Bb, Lb, Lref = 131072 // s, 64 // s if quick else 64, 2048, 1024
    cases = []

    def add(cid, model, B, length, dtype, variants):
        for v in variants:
            cases.append(dict(kind="model", id=f"{cid}-{v}", case=cid, model=model, B=B, L=length, dtype=dtype,
                              variant=v, threads=threads))  # fmt: skip

    add("ps", "ps", 1, L, "fp32", ["fused", "before"])
    add("ps-batch", "ps", Bb, Lb, "fp32", ["fused", "before"])
    add("ph", "ph", 1, L, "fp32", ["fused", "before"] if all_before or quick else ["fused"])
    add("ps-bf16", "ps", 1, L, "bf16", ["fused", "before"] if all_before or quick else ["fused"])
    add("ps-ref", "ps", 1, Lref, "fp32", ["fused", "before", "torch"])
    rows = sorted({(c["B"] * c["L"], c["dtype"]) for c in cases})
    floors = [dict(kind="floor", id=f"floor-{m}-{d}", rows=m, dtype=d, threads=threads) for m, d in rows]
    return cases, floors


def _diff(out_dir: Path, a: str, b: str) -> float | None:
    import torch

    pa, pb = out_dir / f"{a}.pt", out_dir / f"{b}.pt"
    if not (pa.exists() and pb.exists()):
        return None
    x, y = torch.load(pa).float(), torch.load(pb).float()
    return ((x - y).abs().max() / y.abs().max()).item()


def analyse(rows: list[dict], out_dir: Path) -> None:
    """Adds to each model row its floors, ratios and output differences."""
    floors = {(r["rows"], r["dtype"]): r for r in rows if r["kind"] == "floor" and "error" not in r}
    by_id = {r["id"]: r for r in rows if r["kind"] == "model" and "error" not in r}
    for r in by_id.values():
        f = floors.get((r["B"] * r["L"], r["dtype"]))
        if f:
            per_mixer = f["in_proj_s"] + f["x_proj_s"] + f["out_proj_s"]
            r["floor_s"] = 4 * N_LAYER * per_mixer  # the 64 mixers of the composition
            r["floor_executed_s"] = N_LAYER * (2 * f["in_proj_s"] + 4 * f["x_proj_s"] + 2 * f["out_proj_s"])
            r["x_floor"] = r["wall_s"] / r["floor_s"]
            r["x_floor_executed"] = r["wall_s"] / r["floor_executed_s"]
        before = by_id.get(f"{r['case']}-before")
        if before and before is not r:
            r["speedup_vs_before"] = before["wall_s"] / r["wall_s"]
            r["rel_diff_vs_before"] = _diff(out_dir, r["id"], before["id"])
        ref = by_id.get(f"{r['case']}-torch")
        if ref and ref is not r:
            r["speedup_vs_torch"] = ref["wall_s"] / r["wall_s"]
            r["rel_diff_vs_torch"] = _diff(out_dir, r["id"], ref["id"])
    fused = {r["case"]: r for r in by_id.values() if r["variant"] == "fused"}
    if "ph" in fused and "ps" in fused:
        fused["ph"]["ph_over_ps_per_token"] = fused["ph"]["wall_s"] / fused["ps"]["wall_s"]
    if "ps-bf16" in fused and "ps" in fused:
        fused["ps-bf16"]["bf16_speedup"] = fused["ps"]["wall_s"] / fused["ps-bf16"]["wall_s"]
        fused["ps-bf16"]["rel_diff_vs_fp32"] = _diff(out_dir, "ps-bf16-fused", "ps-fused")
        fused["ps-bf16"]["before_rel_diff_vs_fp32"] = _diff(out_dir, "ps-bf16-before", "ps-before")


def profile(length: int, threads: int, model: str, dtype: str, rows: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    if threads:
        torch.set_num_threads(threads)
    fwd, ids, _ = _build(dict(model=model, B=1, L=length, dtype=dtype, variant="fused"))
    with torch.inference_mode():
        fwd(ids[:, :1024])
        t = time.perf_counter()
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            fwd(ids)
        wall = time.perf_counter() - t
    print(
        f"{model} {dtype} 1 x {length}, {torch.get_num_threads()} threads: {wall:.1f} s wall (profiled), "
        f"load {os.getloadavg()[0]:.1f}; numba::* = our kernels (scan, conv, add_norm), aten::mm/addmm = matmuls"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sanity run at 1/16 of the lengths")
    ap.add_argument("--threads", type=int, default=2, help="torch (and numba) threads; 0 = torch's default")
    ap.add_argument("--cases", nargs="*", help="only these case ids (e.g. ps-fused ps-before)")
    ap.add_argument("--all-before", action="store_true", help="also the 'before' rows of PH and bf16 (+4 min)")
    ap.add_argument("--profile", action="store_true", help="profile one fused forward by op and exit")
    ap.add_argument("--profile-length", type=int, default=16384)
    ap.add_argument("--profile-model", default="ps", choices=["ps", "ph"])
    ap.add_argument("--profile-dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(json.loads(args._case), Path(args._out))))
        return
    if args.profile:
        profile(args.profile_length, args.threads, args.profile_model, args.profile_dtype, 25)
        return
    cases, floors = plan(args.quick, args.threads, args.all_before)
    if args.cases:
        cases = [c for c in cases if c["id"] in args.cases]
        needed = {(c["B"] * c["L"], c["dtype"]) for c in cases}
        floors = [f for f in floors if (f["rows"], f["dtype"]) in needed]
    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in floors + cases:
            rows.append(_spawn(case, Path(tmp)))
            print(json.dumps(rows[-1])[:600], flush=True)
        analyse(rows, Path(tmp))
    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), host=platform.node(), cpu=_cpu_name(),
        cores=os.cpu_count(), mem_total_gib=round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        python=platform.python_version(), versions=_versions(), quick=args.quick, threads=args.threads or "default",
        total_s=round(time.time() - t0, 1),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "caduceus_quick" if args.quick else "caduceus"
    if args.cases:
        stem += "_partial"
    result = dict(meta=meta, rows=rows)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


# ---------------------------------------------------------------------------------------------------- reporting


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _versions() -> dict:
    import numba
    import torch

    return dict(torch=torch.__version__, numba=numba.__version__)


def _f(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    lines = [
        f"Caduceus benchmark, {meta['date']}: {meta['cpu']}, {meta['cores']} cores, {meta['mem_total_gib']} GiB; "
        f"torch {meta['versions']['torch']}, numba {meta['versions']['numba']}; {meta['threads']} threads; "
        f"whole run {meta['total_s']:.0f} s. Published 131k configs (d_model 256, 16 layers), random weights, "
        "inference. x floor = wall / matmul floor of the composition's 64 mixers; x exec = wall / the matmuls the "
        "fused path issues; before = the module-by-module composition (the pre-issue-13 code), same weights; rel "
        "diff = max |out - before| / max |before|; load = 1-minute load average before-after (2 shared cores).",
        "",
        "| case | variant | B x L | dtype | wall s | cpu s | tokens/s | peak RSS MiB | floor s | x floor | exec "
        "floor s | x exec | x faster than before | rel diff vs before | load |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["kind"] != "model":
            continue
        if "error" in r:
            why = r["error"].strip().splitlines()[-1][:140]
            lines.append(f"| {r['case']} | {r['variant']} | {r['B']} x {r['L']:,} | {r['dtype']} | failed: {why} "
                         "| | | | | | | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['B']} x {r['L']:,} | {r['dtype']} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} | {_f(r.get('floor_s'), '.1f')} "
            f"| {_f(r.get('x_floor'), '.2f')} | {_f(r.get('floor_executed_s'), '.1f')} "
            f"| {_f(r.get('x_floor_executed'), '.2f')} | {_f(r.get('speedup_vs_before'), '.2f')} "
            f"| {_f(r.get('rel_diff_vs_before'), '.1e')} | {r['load_before']:.1f}-{r['load_after']:.1f} |"
        )
    extra = []
    for r in rows:
        if "speedup_vs_torch" in r:
            extra.append(f"- {r['id']}: {r['speedup_vs_torch']:.1f}x the pure-PyTorch reference backend (same run, "
                         f"{r['B']} x {r['L']:,}), rel diff {r['rel_diff_vs_torch']:.1e}")  # fmt: skip
        if "ph_over_ps_per_token" in r:
            extra.append(f"- PH conjoined / PS per token (fused): {r['ph_over_ps_per_token']:.2f}")
        if "bf16_speedup" in r:
            before = r.get("before_rel_diff_vs_fp32")
            before = "" if before is None else f" (before: {before:.1e})"
            extra.append(f"- bf16 / fp32 speed (fused PS): {r['bf16_speedup']:.2f}x; output rel diff bf16 vs fp32 "
                         f"{r['rel_diff_vs_fp32']:.1e}{before}")  # fmt: skip
    floors = [r for r in rows if r["kind"] == "floor" and "error" not in r]
    if floors:
        parts = [
            f"{f['rows']:,} rows {f['dtype']}: in_proj {f['in_proj_s']:.3f}, x_proj {f['x_proj_s']:.3f}, "
            f"out_proj {f['out_proj_s']:.3f} (load {f['load_before']:.1f}-{f['load_after']:.1f})"
            for f in floors
        ]
        extra.append("- matmul seconds per mixer: " + "; ".join(parts))
    return "\n".join(lines + [""] + extra) + "\n"


if __name__ == "__main__":
    main()
