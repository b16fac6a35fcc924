"""Fused CPU backend of the Mamba-1 selective scan and mixer inner (issue 4), forward and backward.

Same signatures and semantics as genomics.ssm.reference (the oracle) and mamba_ssm's selective_scan_fn /
mamba_inner_fn; the numba kernels live in _cpu_scan (scan) and _cpu_conv (causal conv + SiLU), their scalar math
(a vectorisable exp) in _cpu_math. Design notes and measurements: kb/cpu-kernel.md.

mamba_inner_cpu keeps only the three matmuls (x_proj, dt_proj, out_proj) in torch; causal conv, SiLU,
softplus(dt + bias), the scan, the D skip and the SiLU gate run in two numba kernels, reading xz in place when its
memory is time-major, i.e. xz = in_proj(h).transpose(1, 2) (a channels-major xz costs one transposed copy).
Full-length intermediates: xs, delta (reused as the scan output), each (B, L, D); no (B, L, D, N) tensor ever.
With grad enabled, the forward also keeps a state checkpoint every CHUNK steps ((B, L / CHUNK, N, D), 1/4 of one
(B, L, D) tensor) and the backward recomputes the states chunk by chunk.

dtypes: float32 and bfloat16 activations are computed in float32 (bf16 is read / written as 16-bit words, no
converted copies); float64 is computed in float64 (used by gradcheck). Weights are cast to xz's dtype for the
matmuls; A, D, biases and conv weights are used in the compute dtype.

Threads: torch runs the matmuls on its OpenMP pool, numba the kernels on its own (the "omp" layer, a second libgomp).
Each call sets numba's thread count to torch.get_num_threads(), so torch.set_num_threads() governs both; the two
pools never run at the same time (kernels and matmuls alternate) and OMP's spin-wait after a parallel region is short
(measured in kb/cpu-kernel.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from pathlib import Path

import numba
import torch
import torch.nn.functional as F
from torch import Tensor

from genomics.ssm import _cpu_conv, _cpu_math, _cpu_scan

CHUNK = 64  # scan steps between state checkpoints (backward recomputes one chunk at a time)
FWD_BLOCK_MAX = 256  # channels per forward job, at most
BWD_BLOCK = 64  # channels per backward job: its (CHUNK, N, BWD_BLOCK) recompute buffers stay in L2
_LOG2E = 1.4426950408889634


# ------------------------------------------------------------------------------------------------------- helpers


def _drop_stale_jit_cache() -> None:
    """numba's on-disk cache (cache=True) checks only the source file of each cached function, not the helpers it
    inlines from other modules (_cpu_math): after any edit of the kernel files, drop all of their cached code."""
    try:
        sources = b"".join(Path(m.__file__).read_bytes() for m in (_cpu_math, _cpu_scan, _cpu_conv))
        digest = hashlib.sha256(sources + numba.__version__.encode()).hexdigest()[:20]
        cache_dir = Path(_cpu_scan.scan_fwd._cache._cache_path)  # numba internals; skipped if they change
        stamp = cache_dir / "_cpu_kernels.stamp"
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for path in list(cache_dir.glob("_cpu_scan.*.nb[ic]")) + list(cache_dir.glob("_cpu_conv.*.nb[ic]")):
            path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except (OSError, AttributeError):
        pass


_drop_stale_jit_cache()


def _use_workqueue_layer() -> None:
    """Prefer numba's "workqueue" threading layer (plain pthreads that sleep when idle) over "omp", whose idle threads
    spin: under load they steal the cores the next kernel or torch matmul needs (measured in kb/cpu-kernel.md).
    Only when the user chose no layer (NUMBA_THREADING_LAYER) and no parallel numba code has run yet."""
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        numba.threading_layer()  # raises ValueError until the first parallel launch
    except ValueError:
        numba.config.THREADING_LAYER = "workqueue"


_use_workqueue_layer()
_LAUNCH = threading.Lock()  # workqueue is not thread-safe: kernels from several Python threads take turns


def _launch(kernel, *args) -> None:
    with _LAUNCH:
        kernel(*args)


def _threads() -> int:
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def _np(t: Tensor):
    """Zero-copy numpy view; bf16 is passed as its 16-bit words."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy()


def _compute_dtype(storage: torch.dtype) -> torch.dtype:
    return torch.float64 if storage == torch.float64 else torch.float32


def _storage_dtype(*tensors: Tensor | None) -> torch.dtype:
    """One storage dtype for all activations: theirs if they agree, else float32 (float64 if any is)."""
    dts = {t.dtype for t in tensors if t is not None}
    if len(dts) == 1 and next(iter(dts)) in (torch.float32, torch.float64, torch.bfloat16):
        return next(iter(dts))
    return torch.float64 if torch.float64 in dts else torch.float32


def _time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, C, L) -> (B, L, C) contiguous in `dtype`; free when x's memory already is time-major."""
    return x.transpose(1, 2).to(dtype).contiguous()


def _vec(v: Tensor | None, n: int, ct: torch.dtype) -> Tensor:
    return torch.zeros(n, dtype=ct) if v is None else v.detach().to(ct).contiguous()


def _scan_params(A: Tensor, D: Tensor | None, delta_bias: Tensor | None, ct: torch.dtype):
    d_inner = A.shape[0]
    At = A.detach().to(ct).t().contiguous()  # (N, D)
    return (At * _LOG2E).contiguous(), At, _vec(D, d_inner, ct), _vec(delta_bias, d_inner, ct)


def _fwd_block(d_inner: int, batch: int, threads: int) -> int:
    """Channels per forward job: as wide as possible (long contiguous row segments, less loop overhead) while
    giving every thread a job; at most 256 (state 16 KiB in float32, in L1)."""
    per_batch = max(1, math.ceil(threads / batch))
    return max(8, min(FWD_BLOCK_MAX, 8 * math.ceil(d_inner / per_batch / 8)))


def _nseg(length: int, threads: int) -> int:
    return max(1, min(math.ceil(length / 256), 4 * threads))


def _dummy(dtype: torch.dtype, ndim: int = 3) -> Tensor:
    return torch.zeros((1,) * ndim, dtype=dtype)


def _delta_source(dt: Tensor | None, dt_w: Tensor | None, u: Tensor, ct: torch.dtype):
    """Either delta before bias, dt (B, L, D), or dt_proj.weight (D, R) to compute it in the kernel from xbc."""
    if dt_w is None:
        return _np(dt), _np(torch.zeros(1, u.shape[-1], dtype=ct)), False
    return _np(_dummy(u.dtype)), _np(dt_w.detach().to(ct).t().contiguous()), True  # dtw (R, D)


def _run_scan(u, u_off, xbc, b_off, c_off, z, z_off, A, D, delta_bias, delta_softplus, out, save,
              dt=None, dt_w=None, dt_off=0):  # fmt: skip
    """Forward scan on time-major buffers (see _cpu_scan.scan_fwd); returns the checkpoints (or None)."""
    threads = _threads()
    Bt, L, _ = u.shape
    ct = _compute_dtype(u.dtype)
    A2t, _, Dv, bias = _scan_params(A, D, delta_bias, ct)
    ckpt = torch.empty(Bt, math.ceil(L / CHUNK), A.shape[1], A.shape[0], dtype=ct) if save else _dummy(ct, 4)
    has_z = z is not None
    zz = z if has_z else _dummy(u.dtype)
    dt_np, dtw, fuse = _delta_source(dt, dt_w, u, ct)
    _launch(
        _cpu_scan.scan_fwd,
        _np(u), u_off, dt_np, dtw, dt_off, fuse, _np(xbc), b_off, c_off, _np(zz), z_off, has_z, _np(A2t), _np(Dv),
        _np(bias), bool(delta_softplus), _np(out), _np(ckpt), CHUNK, save, _fwd_block(A.shape[0], Bt, threads),
    )  # fmt: skip
    return ckpt if save else None


def _run_scan_bwd(u, u_off, xbc, b_off, c_off, z, z_off, A, D, delta_bias, delta_softplus, ckpt, gout,
                  dz, dz_off, ygate, dt=None, dt_w=None, dt_off=0):  # fmt: skip
    """Backward scan; returns du, ddt (storage dtype, (B, L, D)), dBC (B, L, 2N), dA (D, N), dD, dbias."""
    threads = _threads()
    Bt, L, _ = u.shape
    d_inner, N = A.shape
    ct = _compute_dtype(u.dtype)
    A2t, At, Dv, bias = _scan_params(A, D, delta_bias, ct)
    P = max(1, min(threads, math.ceil(d_inner / BWD_BLOCK)))
    du, ddt = torch.empty(Bt, L, d_inner, dtype=u.dtype), torch.empty(Bt, L, d_inner, dtype=u.dtype)
    dbc_part = torch.zeros(P, Bt, L, 2 * N, dtype=ct)
    dAt, dD, dbias = torch.empty(N, d_inner, dtype=ct), torch.empty(d_inner, dtype=ct), torch.empty(d_inner, dtype=ct)
    has_z = z is not None
    zz = z if has_z else _dummy(u.dtype)
    dzz = dz if has_z else _dummy(u.dtype)
    want_y = ygate is not None
    yg = ygate if want_y else _dummy(u.dtype)
    dt_np, dtw, fuse = _delta_source(dt, dt_w, u, ct)
    _launch(
        _cpu_scan.scan_bwd,
        _np(u), u_off, dt_np, dtw, dt_off, fuse, _np(xbc), b_off, c_off, _np(zz), z_off, has_z, _np(A2t), _np(At),
        _np(Dv), _np(bias), bool(delta_softplus), _np(ckpt), CHUNK, _np(gout), _np(du), _np(ddt), _np(dzz), dz_off,
        _np(yg), want_y, _np(dbc_part), _np(dAt), _np(dD), _np(dbias), BWD_BLOCK,
    )  # fmt: skip
    return du, ddt, dbc_part.sum(0), dAt.t(), dD, dbias


def _grad(g: Tensor | None, like: Tensor | None, needed: bool):
    if g is None or like is None or not needed:
        return None
    return g.to(like.dtype).reshape(like.shape)


# ---------------------------------------------------------------------------------------------- selective scan


def _scan_inputs(u, delta, B, C, z):
    if B.dim() != 3 or C.dim() != 3:
        raise NotImplementedError("cpu selective_scan supports input-dependent B, C of shape (batch, d_state, L)")
    sd = _storage_dtype(u, delta, B, C, z)
    xbc = _time_major(torch.cat([B.to(sd), C.to(sd)], dim=1), sd)  # (Bt, L, 2N)
    zt = None if z is None else _time_major(z, sd)
    return sd, _time_major(u, sd), _time_major(delta, sd), xbc, zt


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        sd, ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
        out = torch.empty_like(dtt)
        N = A.shape[1]
        ckpt = _run_scan(ut, 0, xbc, 0, N, zt, 0, A, D, delta_bias, delta_softplus, out, save=True, dt=dtt)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        return out.transpose(1, 2).to(u.dtype)  # (Bt, D, L)

    @staticmethod
    def backward(ctx, gout):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        sd, ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
        N = A.shape[1]
        dzt = None if z is None else torch.empty_like(zt)
        du, ddt, dbc, dA, dD, dbias = _run_scan_bwd(
            ut, 0, xbc, 0, N, zt, 0, A, D, delta_bias, ctx.delta_softplus, ckpt, _time_major(gout, sd), dzt, 0, None,
            dt=dtt,
        )  # fmt: skip
        need = ctx.needs_input_grad
        dbc = dbc.transpose(1, 2)  # (Bt, 2N, L)
        return (
            _grad(du.transpose(1, 2), u, need[0]),
            _grad(ddt.transpose(1, 2), delta, need[1]),
            _grad(dA, A, need[2]),
            _grad(dbc[:, :N], B, need[3]),
            _grad(dbc[:, N:], C, need[4]),
            _grad(dD, D, need[5]),
            _grad(None if dzt is None else dzt.transpose(1, 2), z, need[6]),
            _grad(dbias, delta_bias, need[7]),
            None,
        )


def _wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False) -> Tensor:
    """Fused selective scan; (B, D, L) in and out, as reference.selective_scan_ref."""
    if _wants_grad(u, delta, A, B, C, D, z, delta_bias):
        return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    sd, ut, dtt, xbc, zt = _scan_inputs(u, delta, B, C, z)
    out = dtt if dtt.data_ptr() != delta.data_ptr() else torch.empty_like(dtt)  # never overwrite the caller's delta
    _run_scan(ut, 0, xbc, 0, A.shape[1], zt, 0, A, D, delta_bias, delta_softplus, out, save=False, dt=dtt)
    return out.transpose(1, 2).to(u.dtype)


# ------------------------------------------------------------------------------------------------- mamba inner


def _conv_fwd(xzt: Tensor, conv_w: Tensor, conv_b: Tensor | None, d_inner: int) -> Tensor:
    """xs = silu(causal_conv(x)) (B, L, D) in xz's dtype, x read from the time-major xzt (B, L, 2D)."""
    threads = _threads()
    Bt, L, _ = xzt.shape
    ct = _compute_dtype(xzt.dtype)
    wT = conv_w.detach().reshape(d_inner, -1).t().to(ct).contiguous()  # (K, D)
    xs = torch.empty(Bt, L, d_inner, dtype=xzt.dtype)
    _launch(_cpu_conv.conv_silu_fwd, _np(xzt), 0, _np(wT), _np(_vec(conv_b, d_inner, ct)), _np(xs), _nseg(L, threads))
    return xs


def _inner_forward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus,
                   save):  # fmt: skip
    """Returns out (B, L, d_model) and what the backward needs (x_dbl, checkpoints) when `save`."""
    d_inner = A.shape[0]
    rank, N = dt_proj_w.shape[1], A.shape[1]
    xzt = _time_major(xz, _storage_dtype(xz))  # (B, L, 2D)
    xs = _conv_fwd(xzt, conv_w, conv_b, d_inner)  # (B, L, D)
    x_dbl = F.linear(xs, x_proj_w.to(xs.dtype))  # (B, L, R + 2N) = [dt | B | C]
    y = torch.empty_like(xs)  # (B, L, D)
    ckpt = _run_scan(
        xs, 0, x_dbl, rank, rank + N, xzt, d_inner, A, D, delta_bias, softplus, y, save, dt_w=dt_proj_w, dt_off=0
    )  # delta = softplus(x_dbl[..., :R] @ dt_proj.weight^T + delta_bias) is computed inside the kernel
    del xs
    bias = None if out_proj_b is None else out_proj_b.to(y.dtype)
    out = F.linear(y, out_proj_w.to(y.dtype), bias)  # (B, L, d_model)
    return out, x_dbl, ckpt


class _MambaInnerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus):
        out, x_dbl, ckpt = _inner_forward(
            xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, softplus, save=True
        )
        ctx.save_for_backward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias,
                              x_dbl, ckpt)  # fmt: skip
        ctx.softplus = softplus
        return out

    @staticmethod
    def backward(ctx, gout):
        xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, delta_bias, x_dbl, ckpt = (
            ctx.saved_tensors
        )
        need = ctx.needs_input_grad
        d_inner, N = A.shape
        rank = dt_proj_w.shape[1]
        xzt = _time_major(xz, _storage_dtype(xz))  # (B, L, 2D)
        sd = xzt.dtype
        Bt, L, _ = xzt.shape
        xs = _conv_fwd(xzt, conv_w, conv_b, d_inner)  # recomputed, (B, L, D)
        gout = gout.to(sd)
        gy = gout @ out_proj_w.to(sd)  # dL/d(gated y), (B, L, D)
        dxz = torch.empty_like(xzt)  # (B, L, 2D): z half from the scan, x half from the conv
        ygate = torch.empty_like(xs)  # the forward's scan output, recomputed for out_proj's weight gradient
        du, ddelta, dbc, dA, dD, dbias = _run_scan_bwd(
            xs, 0, x_dbl, rank, rank + N, xzt, d_inner, A, D, delta_bias, ctx.softplus, ckpt, gy, dxz, d_inner,
            ygate, dt_w=dt_proj_w, dt_off=0,
        )  # fmt: skip
        flat = (Bt * L, -1)
        d_out_w = gout.reshape(flat).t() @ ygate.reshape(flat)  # (d_model, D)
        d_out_b = None if out_proj_b is None else gout.reshape(flat).sum(0)
        del ygate, gy
        dx_dbl = torch.cat([ddelta @ dt_proj_w.to(sd), dbc.to(sd)], dim=-1)  # (B, L, R + 2N)
        d_dt_w = ddelta.reshape(flat).t() @ x_dbl[..., :rank].reshape(flat)  # (D, R)
        del ddelta
        d_x_w = dx_dbl.reshape(flat).t() @ xs.reshape(flat)  # (R + 2N, D)
        du.reshape(flat).addmm_(dx_dbl.reshape(flat), x_proj_w.to(sd))  # dL/dxs, (B, L, D)
        del xs, dx_dbl
        d_conv_w, d_conv_b = _conv_bwd(xzt, conv_w, conv_b, du, dxz, d_inner)
        return (
            _grad(dxz.transpose(1, 2), xz, need[0]),
            _grad(d_conv_w, conv_w, need[1]),
            _grad(d_conv_b, conv_b, need[2]),
            _grad(d_x_w, x_proj_w, need[3]),
            _grad(d_dt_w, dt_proj_w, need[4]),
            _grad(d_out_w, out_proj_w, need[5]),
            _grad(d_out_b, out_proj_b, need[6]),
            _grad(dA, A, need[7]),
            _grad(dD, D, need[8]),
            _grad(dbias, delta_bias, need[9]),
            None,
        )


def _conv_bwd(xzt, conv_w, conv_b, dxs, dxz, d_inner):
    """Writes dL/dx into dxz[..., :D]; returns the conv weight (D, K) and bias (D,) gradients."""
    threads = _threads()
    Bt, L, _ = xzt.shape
    ct = _compute_dtype(xzt.dtype)
    wT = conv_w.detach().reshape(d_inner, -1).t().to(ct).contiguous()  # (K, D)
    J = Bt * _nseg(L, threads)
    dw_part = torch.empty(J, wT.shape[0], d_inner, dtype=ct)
    db_part = torch.empty(J, d_inner, dtype=ct)
    _launch(
        _cpu_conv.conv_silu_bwd,
        _np(xzt),
        0,
        _np(wT),
        _np(_vec(conv_b, d_inner, ct)),
        _np(dxs),
        _np(dxz),
        0,
        _np(dw_part),
        _np(db_part),
    )
    return dw_part.sum(0).t(), db_part.sum(0)


def mamba_inner_cpu(
    xz: Tensor,
    conv1d_weight: Tensor,
    conv1d_bias: Tensor | None,
    x_proj_weight: Tensor,
    delta_proj_weight: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    A: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Fused mixer inner + out_proj; (B, 2D, L) in, (B, L, d_model) out, as reference.mamba_inner_ref."""
    args = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A, D,
            delta_bias)  # fmt: skip
    if _wants_grad(*args):
        return _MambaInnerFn.apply(*args, delta_softplus)
    return _inner_forward(*args, delta_softplus, save=False)[0]
