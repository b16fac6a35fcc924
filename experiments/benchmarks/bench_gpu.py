"""GPU benchmark of Caduceus-PS 131k on the SSM backends (issue 14), run by experiments/benchmarks/gpu_checks.sh.

    python experiments/benchmarks/bench_gpu.py                       # backends triton and torch (the default)
    python experiments/benchmarks/bench_gpu.py --backends cuda --append   # add the mamba-ssm rows to the results
    TRITON_INTERPRET=1 python experiments/benchmarks/bench_gpu.py --smoke  # this script's flow on CPU, tiny model

Model: the published Caduceus-PS 131k config (d_model 256, 16 layers, RCPS + BiMamba: 64 mixer passes), random
weights (seed 0, moved off the init values as bench_caduceus.py does), on one CUDA device. Rows:
  fwd      1 x 131,072 and 64 x 2,048 tokens, inference (torch.inference_mode)
  fwd+bwd  64 x 2,048 tokens, loss = mean(out^2), gradients of every parameter
each for ssm_backend triton (and cuda with --backends cuda) in fp32 and bf16 (the model and its input cast); the
pure-torch backend ("torch", a Python loop over the sequence) forward at 64 x 2,048 only (its fwd+bwd would keep
(B, D, N) per step and layer: ~270 GB). Per row: seconds (after a warm-up that compiles the kernels, best of
--reps), peak CUDA memory (torch.cuda.max_memory_allocated, weights included), and the max difference to the CPU
fp32 output of the same weights (the fused CPU kernel, genomics.ssm.cpu_kernel; for 64 x 2,048 its first
--ref-rows sequences, which are independent of the others): rel = max |out - cpu| / max |cpu|. Gradient check:
fwd+bwd at --ref-rows x 2,048 on the GPU against the CPU fp32 backward, max over parameters of
max |g - g_cpu| / max |g_cpu|. OOM is recorded as such.
Writes results/gpu.json and results/gpu.md (gpu_smoke.* with --smoke; --out for another folder).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PS = "caduceus-ps_seqlen-131k_d_model-256_n_layer-16"
SMOKE = dict(d_model=8, n_layer=1, ssm_cfg={"d_state": 4})  # --smoke: a tiny model the interpreter can run


def _build(smoke: bool):
    """The CPU fp32 model (backend "cpu"), weights moved off their init values, in eval mode."""
    import torch

    from genomics.caduceus.config import CaduceusConfig
    from genomics.caduceus.modeling import Caduceus

    torch.manual_seed(0)
    model = Caduceus(CaduceusConfig.published(PS, ssm_backend="cpu", **(SMOKE if smoke else {}))).eval()
    with torch.no_grad():  # A = -[1..N], D = 1 and unit norms would hide errors (as bench_caduceus._build)
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if name.endswith(("A_log", ".D", "norm.weight", "norm_f.weight")):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _ids(B: int, L: int):
    import torch

    return torch.randint(0, 4, (B, L), generator=torch.Generator().manual_seed(2)) + 7  # A C G T


def _rel(a, ref) -> float:
    a, ref = a.float().cpu(), ref.float().cpu()
    return ((a - ref).abs().max() / ref.abs().max()).item()


def _loss(out):
    return out.float().pow(2).mean()


def _grads(model) -> dict:
    return {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}


def cpu_reference(model, shapes: list[tuple[int, int]], ref_rows: int, grad_len: int) -> dict:
    """CPU fp32 outputs per shape (first ref_rows sequences) and the parameter gradients at ref_rows x grad_len."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    ref = {}
    with torch.inference_mode():
        for B, L in shapes:
            t = time.perf_counter()
            ref[(B, L)] = model(_ids(B, L)[:ref_rows]).last_hidden_state
            print(f"cpu fp32 {min(B, ref_rows)} x {L}: {time.perf_counter() - t:.1f} s", flush=True)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    _loss(model(_ids(ref_rows, grad_len)).last_hidden_state).backward()
    ref["grads"] = _grads(model)
    model.zero_grad(set_to_none=True)
    print(f"cpu fp32 fwd+bwd {ref_rows} x {grad_len}: {time.perf_counter() - t:.1f} s", flush=True)
    return ref


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_row(model, row: dict, ref: dict, device, reps: int) -> dict:
    """Time one row; peak memory; difference to the CPU reference."""
    import torch

    B, L, mode = row["B"], row["L"], row["mode"]
    ids = _ids(B, L).to(device)
    cuda = device.type == "cuda"
    try:
        if mode == "fwd":
            with torch.inference_mode():
                model(ids[:1, : min(L, 2048)])  # warm-up: compiles the kernels (same specialisations)
                _sync(device)
                best = float("inf")
                for _ in range(reps):
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    t = time.perf_counter()
                    out = model(ids).last_hidden_state
                    _sync(device)
                    best = min(best, time.perf_counter() - t)
                    exp = ref[(B, L)]
                    diff = _rel(out[: exp.shape[0]], exp)
                    del out
        else:
            warm = ids[:1, : min(L, 2048)]
            _loss(model(warm).last_hidden_state).backward()  # warm-up
            model.zero_grad(set_to_none=True)
            _sync(device)
            best = float("inf")
            for _ in range(reps):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                t = time.perf_counter()
                loss = _loss(model(ids).last_hidden_state)
                loss.backward()
                _sync(device)
                best = min(best, time.perf_counter() - t)
                del loss
                model.zero_grad(set_to_none=True)
            with torch.inference_mode():
                exp = ref[(B, L)]
                diff = _rel(model(ids[: exp.shape[0]]).last_hidden_state, exp)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        return dict(row, seconds=best, tokens_per_s=B * L / best, peak_gib=peak, rel_diff_cpu=diff)
    except torch.cuda.OutOfMemoryError as e:
        return dict(row, error=f"OOM: {str(e).splitlines()[0]}")
    except Exception:
        return dict(row, error=traceback.format_exc()[-1500:])
    finally:
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.empty_cache()


def grad_check(model, ref: dict, ref_rows: int, grad_len: int, device) -> float:
    model.zero_grad(set_to_none=True)
    _loss(model(_ids(ref_rows, grad_len).to(device)).last_hidden_state).backward()
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    exp = ref["grads"]
    assert set(got) == set(exp), sorted(set(exp) ^ set(got))
    return max(_rel(got[n], exp[n]) for n in exp)


def plan(backends: list[str], smoke: bool) -> list[dict]:
    long_L, B, L = (64, 2, 32) if smoke else (131072, 64, 2048)
    rows = []
    for backend in backends:
        for dtype in ("fp32", "bf16"):
            if backend == "torch" and dtype == "bf16":
                continue  # the reference path: fp32 only
            if backend != "torch":
                rows.append(dict(backend=backend, dtype=dtype, mode="fwd", B=1, L=long_L))
            rows.append(dict(backend=backend, dtype=dtype, mode="fwd", B=B, L=L))
            if backend != "torch":
                rows.append(dict(backend=backend, dtype=dtype, mode="fwd+bwd", B=B, L=L))
    return rows


def _meta(device) -> dict:
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(date=now, host=platform.node(), torch=torch.__version__, cuda=torch.version.cuda,
                cpu_threads=os.cpu_count())  # fmt: skip
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    try:
        import mamba_ssm

        meta["mamba_ssm"] = mamba_ssm.__version__
    except Exception as e:  # not installed, or an extension built for another torch
        meta["mamba_ssm"] = f"not importable: {type(e).__name__}"
    meta["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (cpu, Triton interpreter)"
    return meta


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        f"Caduceus-PS 131k on the GPU, {m['date']}: {m['gpu']}; torch {m['torch']} (CUDA {m['cuda']}), triton "
        f"{m['triton']}, mamba-ssm {m['mamba_ssm']}. Published config (d_model 256, 16 layers), random weights; "
        "seconds = best of the timed runs after a warm-up; peak = torch.cuda.max_memory_allocated (weights "
        "included); rel diff = max |out - cpu fp32| / max |cpu fp32| (the fused CPU kernel, same weights; first "
        f"{result['ref_rows']} sequences of a batch). Gradient check ({result['ref_rows']} x {result['grad_len']}, "
        "fwd+bwd vs the CPU fp32 backward, max over parameters of max |g - g_cpu| / max |g_cpu|): "
        + ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in result["grad_check"].items())
        + ".",
        "",
        "| backend | dtype | mode | batch | seconds | tokens/s | peak GiB | rel diff vs CPU fp32 |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        shape = f"{r['B']} x {r['L']:,}"
        if "error" in r:
            err = r["error"].strip().splitlines()[-1][:100]
            lines.append(f"| {r['backend']} | {r['dtype']} | {r['mode']} | {shape} | {err} | | | |")
            continue
        peak = "" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        lines.append(f"| {r['backend']} | {r['dtype']} | {r['mode']} | {shape} | {r['seconds']:.3f} | "
                     f"{r['tokens_per_s']:,.0f} | {peak} | {r['rel_diff_cpu']:.2e} |")  # fmt: skip
    for note in result.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="triton,torch", help="comma-separated: triton, torch, cuda")
    ap.add_argument("--append", action="store_true", help="merge the rows into the existing results file")
    ap.add_argument("--reps", type=int, default=2, help="timed runs per row (the best is kept)")
    ap.add_argument("--ref-rows", type=int, default=4, help="sequences of a batch compared to the CPU output")
    ap.add_argument("--smoke", action="store_true", help="tiny model and lengths (CPU under TRITON_INTERPRET=1)")
    ap.add_argument("--note", action="append", default=[], help="a line added under the table")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    ap.add_argument("--ref-cache", type=Path, default=None, help="keep / reuse the CPU reference in this file")
    args = ap.parse_args(argv)
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("bench_gpu.py needs a CUDA device (or --smoke under TRITON_INTERPRET=1)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rows = plan(backends, args.smoke)
    grad_len = 32 if args.smoke else 2048
    t0 = time.perf_counter()
    base = _build(args.smoke)
    shapes = sorted({(r["B"], r["L"]) for r in rows})
    key = dict(smoke=args.smoke, shapes=shapes, ref_rows=args.ref_rows, grad_len=grad_len)
    cached = torch.load(args.ref_cache) if args.ref_cache and args.ref_cache.is_file() else None
    if cached is not None and cached["key"] == key:
        ref = cached["ref"]
    else:
        ref = cpu_reference(base, shapes, args.ref_rows, grad_len)
        if args.ref_cache:
            torch.save({"key": key, "ref": ref}, args.ref_cache)
    name = "gpu_smoke" if args.smoke else "gpu"
    path = args.out / f"{name}.json"
    result = json.loads(path.read_text()) if args.append and path.is_file() else None
    if result is None:
        result = dict(meta=_meta(device), ref_rows=args.ref_rows, grad_len=grad_len, rows=[], grad_check={}, notes=[])
    result["rows"] = [r for r in result["rows"] if r["backend"] not in backends]
    result["notes"] = list(dict.fromkeys(result.get("notes", []) + args.note))
    for backend in backends:
        for dtype in ("fp32", "bf16"):
            todo = [r for r in rows if r["backend"] == backend and r["dtype"] == dtype]
            if not todo:
                continue
            model = copy.deepcopy(base).to(device)
            model.set_ssm_backend(backend)
            model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
            if backend != "torch":
                key = f"{backend} {dtype}"
                try:
                    result["grad_check"][key] = grad_check(model, ref, args.ref_rows, grad_len, device)
                except Exception:
                    result["grad_check"][key] = "error: " + traceback.format_exc().strip().splitlines()[-1][:200]
                print(f"grad check {key}: {result['grad_check'][key]}", flush=True)
            for row in todo:
                res = run_row(model, row, ref, device, args.reps)
                print(json.dumps(res), flush=True)
                result["rows"].append(res)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result["meta"]["total_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    for p, text in ((path, json.dumps(result, indent=1)), (args.out / f"{name}.md", markdown(result))):
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)
    print(markdown(result))


if __name__ == "__main__":
    main()
