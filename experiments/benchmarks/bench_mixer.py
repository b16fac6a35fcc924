"""Benchmark of one Mamba-1 mixer on CPU (issue 4): ours vs transformers' MambaMixer vs mambapy.

    python experiments/benchmarks/bench_mixer.py            # L = 1k, 4k, 16k, 131k
    python experiments/benchmarks/bench_mixer.py --quick    # sanity run: L = 1k, 4k

Whole Caduceus models: experiments/benchmarks/bench_caduceus.py (issue 13).

Mixer: Caduceus size (d_model 256, d_state 16, expand 2, d_conv 4, dt_rank 16), batch 1, inference
(torch.inference_mode), the same weights in all three:
  ours         genomics.ssm.mamba.Mamba, backend "cpu" (the fused numba kernel, genomics/ssm/cpu_kernel.py)
  ours-bf16    the same module and input in bfloat16 (kernel computes in float32)
  transformers transformers' MambaMixer in eval mode, its pure-torch path (no mamba-ssm kernels on CPU)
  mambapy      mambapy's MambaBlock with its parallel scan (pscan=True)
Training rows time ours' forward and backward (grad enabled) at 4k and 16k.
Each case runs in its own subprocess, so its peak RSS (getrusage) is its own; "work MiB" is the peak minus the RSS
just before the first forward (imports, weights and input excluded). A peer whose peak extrapolated from the
previous length exceeds 80% of the available memory is skipped and reported as such. Times: best of several runs
after a warm-up (the machine may be shared; best-of is the least disturbed). Outputs are compared with
transformers' (or, where it did not run, the reference-equal fp32 "ours"): max |diff| / max |ref|.
Writes results/mixer[_quick].json and .md.
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

D_MODEL, D_STATE, EXPAND, D_CONV, DT_RANK = 256, 16, 2, 4, 16
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------- one case (subprocess)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, min_total_s: float, max_runs: int, min_runs: int = 2):
    """Warm-up once, then run until `min_total_s` has passed (at least `min_runs`); returns (wall, cpu) per run."""
    fn()
    times = []
    while len(times) < min_runs or (sum(t[0] for t in times) < min_total_s and len(times) < max_runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times


def _mixer(impl: str):
    """The mixer module of `impl` with the shared seeded weights (ours' init, then copied by parameter name)."""
    import torch

    from genomics.ssm.mamba import Mamba

    torch.manual_seed(0)
    ours = Mamba(D_MODEL, d_state=D_STATE, d_conv=D_CONV, expand=EXPAND, dt_rank=DT_RANK, backend="cpu")
    with torch.no_grad():  # move away from the init values (A = -[1..N], D = 1) so every parameter matters
        ours.A_log.add_(0.1 * torch.randn_like(ours.A_log))
        ours.D.add_(0.1 * torch.randn_like(ours.D))
    if impl in ("ours", "ours-bf16", "ours-train"):
        return ours.to(torch.bfloat16) if impl == "ours-bf16" else ours
    if impl == "transformers":
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        cfg = MambaConfig(
            hidden_size=D_MODEL, state_size=D_STATE, expand=EXPAND, conv_kernel=D_CONV, time_step_rank=DT_RANK,
            use_bias=False, use_conv_bias=True, num_hidden_layers=1, use_mambapy=False,
        )  # fmt: skip
        peer = MambaMixer(cfg, layer_idx=0).eval()
    elif impl == "mambapy":
        from mambapy.mamba import MambaBlock, MambaConfig

        cfg = MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=EXPAND, d_conv=D_CONV,
                          dt_rank=DT_RANK, bias=False, conv_bias=True, pscan=True)  # fmt: skip
        peer = MambaBlock(cfg)
    else:
        raise ValueError(impl)
    missing, unexpected = peer.load_state_dict(ours.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{impl}: weight names differ: missing {missing}, unexpected {unexpected}")
    return peer


def run_case(case: dict, out_dir: Path) -> dict:
    import torch

    length, impl = case["L"], case["impl"]
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    module = _mixer(impl)
    dtype = torch.bfloat16 if impl == "ours-bf16" else torch.float32
    x = torch.randn(1, length, D_MODEL, generator=torch.Generator().manual_seed(1)).to(dtype)  # (1, L, d_model)
    rss0 = _rss_mib()
    res = dict(impl=impl, L=length, dtype=str(dtype).removeprefix("torch."), threads=torch.get_num_threads())
    if impl == "ours-train":
        x.requires_grad_(True)
        state = {}

        def fwd():
            state["y"] = module(x)

        def bwd():
            state["y"].backward(state["g"])

        fwd()
        state["g"] = torch.randn_like(state["y"])
        bwd()
        t_fwd, t_bwd = [], []
        for _ in range(case["train_runs"]):
            t = time.perf_counter()
            fwd()
            t_fwd.append(time.perf_counter() - t)
            t = time.perf_counter()
            bwd()
            t_bwd.append(time.perf_counter() - t)
            module.zero_grad(set_to_none=True)
            x.grad = None
        res.update(fwd_s=min(t_fwd), bwd_s=min(t_bwd), tokens_per_s=length / min(t_fwd))
        res.update(bwd_over_fwd=res["bwd_s"] / res["fwd_s"], peak_mib=_peak_mib(), work_mib=_peak_mib() - rss0)
        return res
    with torch.inference_mode():
        out = {}

        def fwd():
            out.clear()  # the previous output is not kept alive during the next call
            out["y"] = module(x)

        times = _timed(fwd, case["min_total_s"], case["max_runs"])
    torch.save(out["y"].float(), out_dir / f"{impl}_{length}.pt")
    walls = sorted(t[0] for t in times)
    res.update(runs=len(times), best_s=walls[0], median_s=walls[len(walls) // 2], cpu_s=min(t[1] for t in times))
    res.update(tokens_per_s=length / res["best_s"], peak_mib=_peak_mib(), work_mib=_peak_mib() - rss0)
    return res


# ----------------------------------------------------------------------------------------------------- driver


def _mem_available_mib() -> float:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 1024


def _spawn(case: dict, out_dir: Path) -> dict:
    """Run one case in a fresh interpreter; records the 1-minute load average around it (a shared machine)."""
    cmd = [sys.executable, __file__, "--_case", json.dumps(case), "--_out", str(out_dir)]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    load = dict(load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2))
    if proc.returncode != 0:
        return dict(case, error=(proc.stderr or proc.stdout)[-2000:], returncode=proc.returncode, **load)
    return json.loads(proc.stdout.strip().splitlines()[-1]) | load


def _agreement(out_dir: Path, length: int, impls: list[str]) -> dict:
    import torch

    ref_name = "transformers" if (out_dir / f"transformers_{length}.pt").exists() else "ours"
    ref = torch.load(out_dir / f"{ref_name}_{length}.pt")
    scale = ref.abs().max().item()
    diffs = {}
    for impl in impls:
        path = out_dir / f"{impl}_{length}.pt"
        if impl != ref_name and path.exists():
            diffs[impl] = (torch.load(path) - ref).abs().max().item() / scale
    return dict(reference=ref_name, rel_max_diff=diffs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sanity run: L = 1k, 4k")
    ap.add_argument("--lengths", type=int, nargs="*", help="override the mixer lengths")
    ap.add_argument("--impls", nargs="*", default=["ours", "ours-bf16", "transformers", "mambapy"])
    ap.add_argument("--threads", type=int, default=0, help="torch (and numba) threads per case; 0 = torch's default")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(json.loads(args._case), Path(args._out))))
        return

    lengths = args.lengths or ([1024, 4096] if args.quick else [1024, 4096, 16384, 131072])
    budget = dict(min_total_s=1.0 if args.quick else 4.0, max_runs=5 if args.quick else 20, threads=args.threads)
    rows, agreement, last_peak = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        for length in lengths:
            for impl in args.impls:
                prev = last_peak.get(impl)
                if prev is not None:
                    predicted = prev[1] * length / prev[0]
                    if predicted > 0.8 * _mem_available_mib():
                        rows.append(dict(impl=impl, L=length, skipped=f"predicted peak {predicted / 1024:.1f} GiB "
                                         f"(linear in L from {prev[0]}) > 80% of available memory"))  # fmt: skip
                        print(f"skip {impl} L={length}: {rows[-1]['skipped']}", flush=True)
                        continue
                r = _spawn(dict(impl=impl, L=length, **budget), out_dir)
                rows.append(r)
                if "error" not in r:
                    last_peak[impl] = (length, r["work_mib"])
                print(json.dumps(r)[:400], flush=True)
            agreement[length] = _agreement(out_dir, length, args.impls)
            print(f"L={length} agreement: {agreement[length]}", flush=True)
        for length in [4096] if args.quick else [4096, 16384]:
            case = dict(impl="ours-train", L=length, train_runs=2 if args.quick else 3, threads=args.threads)
            rows.append(_spawn(case, out_dir))
            print(json.dumps(rows[-1]), flush=True)

    meta = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), host=platform.node(), cpu=_cpu_name(),
        cores=os.cpu_count(), mem_total_gib=round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        python=platform.python_version(), versions=_versions(), quick=args.quick, threads=args.threads or "default",
        mixer=dict(d_model=D_MODEL, d_state=D_STATE, expand=EXPAND, d_conv=D_CONV, dt_rank=DT_RANK, batch=1),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("mixer_quick" if args.quick else "mixer") + (f"_{args.threads}threads" if args.threads else "")
    result = dict(meta=meta, rows=rows, agreement={str(k): v for k, v in agreement.items()})
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
    import transformers

    try:
        from importlib.metadata import version

        mambapy = version("mambapy")
    except Exception:
        mambapy = "?"
    return dict(
        torch=torch.__version__, numba=numba.__version__, transformers=transformers.__version__, mambapy=mambapy
    )


def _load(r: dict) -> str:
    return f"{r.get('load_before', float('nan')):.1f}-{r.get('load_after', float('nan')):.1f}"


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    lines = [
        f"Mixer benchmark, {meta['date']}: {meta['cpu']}, {meta['cores']} cores, {meta['mem_total_gib']} GiB; "
        f"torch {meta['versions']['torch']}, numba {meta['versions']['numba']}, transformers "
        f"{meta['versions']['transformers']}, mambapy {meta['versions']['mambapy']}. One mixer (d_model 256, "
        "d_state 16, expand 2), batch 1, inference; best of several runs; peak = the case's subprocess peak RSS, "
        "work = peak minus RSS before the first forward; load = the machine's 1-minute load average before-after the "
        "case (2 cores; other agents' jobs ran on the same machine).",
        "",
        "| L | impl | tokens/s | x transformers | x mambapy | best s | cpu s | peak MiB | work MiB | max rel diff "
        "| load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["impl"], r["L"]): r for r in rows if "tokens_per_s" in r}
    for r in rows:
        if r["impl"] == "ours-train":
            continue
        agree = result["agreement"].get(str(r["L"]), {})
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or "failed: " + r["error"].strip().splitlines()[-1][:120]
            lines.append(f"| {r['L']} | {r['impl']} | - | | | | | | | {why} | |")
            continue
        ratios = []
        for peer in ("transformers", "mambapy"):
            p = by.get((peer, r["L"]))
            ratios.append(f"{r['tokens_per_s'] / p['tokens_per_s']:.1f}" if p and peer != r["impl"] else "")
        diff = agree.get("rel_max_diff", {}).get(r["impl"])
        diff_s = "ref" if agree.get("reference") == r["impl"] else ("" if diff is None else f"{diff:.1e}")
        lines.append(
            f"| {r['L']} | {r['impl']} | {r['tokens_per_s']:,.0f} | {ratios[0]} | {ratios[1]} | {r['best_s']:.3f} "
            f"| {r.get('cpu_s', float('nan')):.3f} | {r['peak_mib']:,.0f} | {r['work_mib']:,.0f} | {diff_s} "
            f"| {_load(r)} |"
        )
    train = [r for r in rows if r["impl"] == "ours-train" and "fwd_s" in r]
    if train:
        lines += ["", "| L | ours, grad enabled | forward s | backward s | backward / forward | peak MiB | load |",
                  "|---:|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in train:
            lines.append(f"| {r['L']} | fp32 | {r['fwd_s']:.3f} | {r['bwd_s']:.3f} | {r['bwd_over_fwd']:.2f} "
                         f"| {r['peak_mib']:,.0f} | {_load(r)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
