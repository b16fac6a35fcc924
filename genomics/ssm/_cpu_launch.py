"""Torch-facing launchers of the numba kernels (_cpu_scan, _cpu_conv): buffers, dtypes, threads, JIT cache.

Threads: torch runs the matmuls on its OpenMP pool, numba runs the kernels on its own pool, and the two alternate.
numba's "omp" layer (a second libgomp) spin-waits after each parallel region and, on a loaded machine, those spinning
threads steal the cores the next kernel needs; its "workqueue" layer sleeps instead and measured faster here
(kb/cpu-kernel.md). So, unless the user set NUMBA_THREADING_LAYER or numba already ran parallel code, we select
"workqueue"; it is not thread-safe, so launches take a lock. Every launch sets numba's thread count to
torch.get_num_threads(): torch.set_num_threads() governs both pools.

JIT cache: the kernels are compiled on first use per dtype (float32, bfloat16 as int16 words, float64) and cached
next to the sources (cache=True). numba checks only the file of each cached function, not helpers it inlines from
other modules, so a hash of all kernel sources guards the cache (_drop_stale_jit_cache).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path

import numba
import torch
from torch import Tensor

from genomics.ssm import _cpu_conv, _cpu_math, _cpu_norm, _cpu_scan

CHUNK = 64  # scan steps between state checkpoints (backward recomputes one chunk at a time)
FWD_BLOCK_MAX = 256  # channels per forward scan job, at most (state (N, 256) = 16 KiB in L1)
BWD_BLOCK = 64  # channels per backward job: its (CHUNK, N, BWD_BLOCK) recompute buffers stay in L2
LOG2E = 1.4426950408889634


def _drop_stale_jit_cache() -> None:
    try:
        sources = b"".join(Path(m.__file__).read_bytes() for m in (_cpu_math, _cpu_scan, _cpu_conv, _cpu_norm))
        digest = hashlib.sha256(sources + numba.__version__.encode()).hexdigest()[:20]
        cache_dir = Path(_cpu_scan.scan_fwd._cache._cache_path)  # numba internals; skipped if they change
        stamp = cache_dir / "_cpu_kernels.stamp"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for name in ("_cpu_scan", "_cpu_conv", "_cpu_norm"):
            for path in cache_dir.glob(f"{name}.*.nb[ic]"):
                path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except (OSError, AttributeError):
        pass


def _use_workqueue_layer() -> None:
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        numba.threading_layer()  # raises ValueError until the first parallel launch
    except ValueError:
        numba.config.THREADING_LAYER = "workqueue"


_drop_stale_jit_cache()
_use_workqueue_layer()
_LAUNCH = threading.Lock()


def launch(kernel, *args) -> None:
    with _LAUNCH, torch.profiler.record_function(f"numba::{kernel.__name__}"):  # named in torch.profiler tables
        kernel(*args)


def threads() -> int:
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


# ------------------------------------------------------------------------------------------- tensors <-> numpy


def np_(t: Tensor):
    """Zero-copy numpy view; bf16 is passed as its 16-bit words."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    return torch.float64 if storage == torch.float64 else torch.float32


def storage_dtype(*tensors: Tensor | None) -> torch.dtype:
    """One storage dtype for all activations: theirs if they agree, else float32 (float64 if any is)."""
    dts = {t.dtype for t in tensors if t is not None}
    if len(dts) == 1 and next(iter(dts)) in (torch.float32, torch.float64, torch.bfloat16):
        return next(iter(dts))
    return torch.float64 if torch.float64 in dts else torch.float32


def time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, C, L) -> (B, L, C) contiguous in `dtype`; free when x's memory already is time-major."""
    return x.transpose(1, 2).to(dtype).contiguous()


def vec(v: Tensor | None, n: int, ct: torch.dtype) -> Tensor:
    return torch.zeros(n, dtype=ct) if v is None else v.detach().to(ct).contiguous()


def dummy(dtype: torch.dtype, ndim: int = 3) -> Tensor:
    return torch.zeros((1,) * ndim, dtype=dtype)


# ---------------------------------------------------------------------------------------------------- the scan


class ScanParams:
    """Per-call constants of the scan in the compute dtype: A2t = A^T log2(e), At = A^T (N, D); D, delta_bias (D,);
    dtw = dt_proj.weight^T (R, D) when delta is computed in the kernel (fused), else a dummy."""

    def __init__(self, A, D, delta_bias, delta_softplus, ct, dt_w=None):
        d_inner = A.shape[0]
        self.At = A.detach().to(ct).t().contiguous()  # (N, D)
        self.A2t = (self.At * LOG2E).contiguous()
        self.Dv, self.bias = vec(D, d_inner, ct), vec(delta_bias, d_inner, ct)
        self.softplus = bool(delta_softplus)
        self.fuse_dt = dt_w is not None
        self.dtw = dt_w.detach().to(ct).t().contiguous() if self.fuse_dt else torch.zeros(1, d_inner, dtype=ct)


def fwd_block(d_inner: int, batch: int, n_threads: int) -> int:
    """Channels per forward job: as wide as possible (long contiguous row segments, less loop overhead) while giving
    every thread a job."""
    per_batch = max(1, math.ceil(n_threads / batch))
    return max(8, min(FWD_BLOCK_MAX, 8 * math.ceil(d_inner / per_batch / 8)))


def run_scan(p: ScanParams, u, xbc, b_off, c_off, z, z_off, out, *, dt=None, dt_off=0, z_t0=0, h0=None,
             ckpt=None, ck0=0, out_t0=0, reverse=False, mode=0):  # fmt: skip
    """Forward scan on time-major buffers (_cpu_scan.scan_fwd): rows t of u / dt / xbc are rows z_t0 + t of z and
    out_t0 + t of out; h0 (B, N, D) carries the state in and out; ckpt (B, L_total / CHUNK, N, D) receives
    checkpoints from ck0. reverse: the recurrence runs from the last row to the first (no checkpoints); mode 0 / 1 / 2:
    out = / += / *= the gated output."""
    n_threads = threads()
    Bt, _, _ = u.shape
    N, d_inner = p.A2t.shape
    ct = p.A2t.dtype
    h0 = torch.zeros(Bt, N, d_inner, dtype=ct) if h0 is None else h0
    has_z, save = z is not None, ckpt is not None
    if reverse and save:
        raise NotImplementedError("reverse scans keep no checkpoints (inference only)")
    launch(
        _cpu_scan.scan_fwd,
        np_(u), 0, np_(dummy(u.dtype) if dt is None else dt), np_(p.dtw), dt_off, p.fuse_dt, np_(xbc), b_off, c_off,
        np_(z if has_z else dummy(u.dtype)), z_off, z_t0, has_z, np_(p.A2t), np_(p.Dv), np_(p.bias), p.softplus,
        np_(out), np_(h0), np_(ckpt if save else dummy(ct, 4)), ck0, CHUNK, save, fwd_block(d_inner, Bt, n_threads),
        out_t0, bool(reverse), int(mode),
    )  # fmt: skip


def run_scan_bwd(p: ScanParams, u, xbc, b_off, c_off, z, z_off, ckpt, gout, dz, dz_off, ygate, *, dt=None,
                 dt_off=0):  # fmt: skip
    """Backward scan (_cpu_scan.scan_bwd) over whole sequences; returns du, ddt (u's dtype, (B, L, D)),
    dBC (B, L, 2N), dA (D, N), dD, dbias in the compute dtype. Writes dz (at dz_off) and, if given, ygate."""
    n_threads = threads()
    Bt, L, _ = u.shape
    N, d_inner = p.A2t.shape
    ct = p.A2t.dtype
    P = max(1, min(n_threads, math.ceil(d_inner / BWD_BLOCK)))
    du, ddt = torch.empty(Bt, L, d_inner, dtype=u.dtype), torch.empty(Bt, L, d_inner, dtype=u.dtype)
    dbc_part = torch.zeros(P, Bt, L, 2 * N, dtype=ct)  # per-partition sums over channels
    dAt, dD, dbias = torch.empty(N, d_inner, dtype=ct), torch.empty(d_inner, dtype=ct), torch.empty(d_inner, dtype=ct)
    has_z, want_y = z is not None, ygate is not None
    launch(
        _cpu_scan.scan_bwd,
        np_(u), 0, np_(dummy(u.dtype) if dt is None else dt), np_(p.dtw), dt_off, p.fuse_dt, np_(xbc), b_off, c_off,
        np_(z if has_z else dummy(u.dtype)), z_off, has_z, np_(p.A2t), np_(p.At), np_(p.Dv), np_(p.bias),
        p.softplus, np_(ckpt), CHUNK, np_(gout), np_(du), np_(ddt), np_(dz if has_z else dummy(u.dtype)), dz_off,
        np_(ygate if want_y else dummy(u.dtype)), want_y, np_(dbc_part), np_(dAt), np_(dD), np_(dbias), BWD_BLOCK,
    )  # fmt: skip
    return du, ddt, dbc_part.sum(0), dAt.t(), dD, dbias


# ---------------------------------------------------------------------------------------------------- the conv


def nseg(length: int, n_threads: int) -> int:
    return max(1, min(math.ceil(length / 256), 4 * n_threads))


def conv_weights(conv_w: Tensor, conv_b: Tensor | None, ct: torch.dtype):
    """Depthwise conv weight (D, 1, K) as (K, D) and bias (D,) in the compute dtype."""
    d_inner = conv_w.shape[0]
    return conv_w.detach().reshape(d_inner, -1).t().to(ct).contiguous(), vec(conv_b, d_inner, ct)


def run_conv(xzt: Tensor, wT: Tensor, bias: Tensor, xs: Tensor, t0: int = 0, reverse: bool = False) -> None:
    """xs (B, T, D) = silu(causal_conv(x))[:, t0 : t0 + T], x read from the time-major xzt (B, L, 2D) columns :D;
    reverse: the conv of the time-reversed sequence, in forward row order (anti-causal, taps mirrored)."""
    n = nseg(xs.shape[1], threads())
    launch(_cpu_conv.conv_silu_fwd, np_(xzt), 0, t0, np_(wT), np_(bias), np_(xs), n, bool(reverse))


def run_conv_bwd(xzt: Tensor, wT: Tensor, bias: Tensor, dxs: Tensor, dxz: Tensor):
    """Writes dL/dx into dxz[..., :D]; returns the conv weight (D, K) and bias (D,) gradients."""
    Bt, L, d_inner = dxs.shape
    J = Bt * nseg(L, threads())
    dw_part = torch.empty(J, wT.shape[0], d_inner, dtype=wT.dtype)
    db_part = torch.empty(J, d_inner, dtype=wT.dtype)
    launch(_cpu_conv.conv_silu_bwd, np_(xzt), 0, np_(wT), np_(bias), np_(dxs), np_(dxz), 0, np_(dw_part), np_(db_part))
    return dw_part.sum(0).t(), db_part.sum(0)


# ------------------------------------------------------------------------------------------- residual add + norm


def run_add_norm(h: Tensor, r: Tensor, has_res: bool, s_add: int, sel: int, w: Tensor, b: Tensor | None,
                 eps: float, rms: bool) -> None:  # fmt: skip
    """In place on (..., W) streams with contiguous rows (_cpu_norm.add_norm): r = r + swap^s_add(h) (or h), then
    half k of h = norm with w[k], b[k] of half (sel + k) of r; w, b (nh, W / nh)."""
    ct = compute_dtype(h.dtype)
    W = h.shape[-1]
    w = w.detach().to(ct).contiguous()
    b = torch.zeros_like(w) if b is None else b.detach().to(ct).contiguous()
    h2, r2 = h.view(-1, W), r.view(-1, W)
    n = max(1, min(h2.shape[0] // 64, 8 * threads()))
    launch(_cpu_norm.add_norm, np_(h2), np_(r2), bool(has_res), int(s_add), int(sel), w.shape[0], np_(w), np_(b),
           float(eps), bool(rms), n)  # fmt: skip
