"""Triton kernels of the causal depthwise conv1d (+ SiLU) of the Mamba-1 mixer (issue 14), forward and backward.

Imports triton at module level: load it through genomics.ssm.triton_conv (lazily). Math as the reference's
`F.conv1d(x, w, b, padding=K - 1, groups=D)[..., :L]` then SiLU (genomics.ssm.reference.mamba_inner_ref; the same
as the CPU kernel genomics/ssm/_cpu_conv.py):

    pre[b, d, t] = bias[d] + sum_k w[d, k] x[b, d, t - (K - 1) + k]     (x = 0 before t = 0)
    out = silu(pre) (or pre)

One program per (batch, block of BD channels, block of BT steps); a block reads the K - 1 steps before it (the
conv's history) from x itself, so blocks are independent. Backward in two kernels: conv_bwd_kernel writes
gpre = dout * silu'(pre) (pre recomputed) to a (B, D, L) float32 buffer, with dw[k] = sum_t gpre[t] x[t - (K - 1) + k]
and dbias = sum_t gpre[t] per (batch, time block), summed by the caller (no atomics: deterministic); conv_dx_kernel
then reads the K - 1 steps after each block: dx[t] = sum_k w[k] gpre[t + K - 1 - k].
Float32 accumulation; bf16 loads converted.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pre(x_row, s_xl, w_ptr, s_wd, s_wk, d, md, bias, t, L, K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr):
    """Conv output before the activation at steps t (BT,) for channels d (BD,): (BD, BT) float32, 0 past L."""
    acc = tl.zeros([BD, BT], dtype=tl.float32) + bias[:, None]
    for k in tl.static_range(K):
        s = t - (K - 1) + k
        m = md[:, None] & ((s >= 0) & (s < L))[None, :]
        xv = tl.load(x_row + s[None, :] * s_xl, mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + d * s_wd + k * s_wk, mask=md, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    return tl.where(md[:, None] & (t < L)[None, :], acc, 0.0)


@triton.jit
def conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, L, Dm,
    s_xb, s_xd, s_xl, s_wd, s_wk, s_ob, s_od, s_ol,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    t = tl.program_id(2) * BT + tl.arange(0, BT)
    md = d < Dm
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32)
    x_row = x_ptr + b * s_xb + d[:, None] * s_xd  # (BD, 1) row starts
    y = _pre(x_row, s_xl, w_ptr, s_wd, s_wk, d, md, bias, t, L, K, BD, BT)
    if SILU:
        y = y * tl.sigmoid(y)
    o = out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol
    tl.store(o, y.to(out_ptr.dtype.element_ty), mask=md[:, None] & (t < L)[None, :])


@triton.jit
def conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, g_ptr, gp_ptr, dw_ptr, db_ptr, L, Dm, n_tb,
    s_xb, s_xd, s_xl, s_wd, s_wk, s_gb, s_gd, s_gl,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    """gpre = dL/dpre into (B, D, L) float32 (contiguous), dw partials (B, n_tb, D, K), db partials (B, n_tb, D)."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    tb = tl.program_id(2)
    t = tb * BT + tl.arange(0, BT)
    md = d < Dm
    m2 = md[:, None] & (t < L)[None, :]
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32)
    x_row = x_ptr + b * s_xb + d[:, None] * s_xd
    gp = tl.load(g_ptr + b * s_gb + d[:, None] * s_gd + t[None, :] * s_gl, mask=m2, other=0.0).to(tl.float32)
    if SILU:
        p = _pre(x_row, s_xl, w_ptr, s_wd, s_wk, d, md, bias, t, L, K, BD, BT)
        sp = tl.sigmoid(p)
        gp = gp * sp * (1.0 + p * (1.0 - sp))
    gp = tl.where(m2, gp, 0.0)  # (BD, BT)
    tl.store(gp_ptr + (b * Dm + d[:, None]) * L + t[None, :], gp, mask=m2)
    part = (b * n_tb + tb) * Dm + d  # (BD,) row of this block in the partial sums
    for k in tl.static_range(K):
        s = t - (K - 1) + k
        xv = tl.load(x_row + s[None, :] * s_xl, mask=md[:, None] & ((s >= 0) & (s < L))[None, :], other=0.0)
        tl.store(dw_ptr + part * K + k, tl.sum(gp * xv.to(tl.float32), axis=1), mask=md)
    tl.store(db_ptr + part, tl.sum(gp, axis=1), mask=md)


@triton.jit
def conv_dx_kernel(
    gp_ptr, w_ptr, dx_ptr, L, Dm, s_wd, s_wk, s_db, s_dd, s_dl,
    K: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    """dx[t] = sum_j w[K - 1 - j] gpre[t + j] (the conv's transpose), into (B, D, L) with strides s_d*."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    t = tl.program_id(2) * BT + tl.arange(0, BT)
    md = d < Dm
    dx = tl.zeros([BD, BT], dtype=tl.float32)
    for j in tl.static_range(K):
        s = t + j
        gv = tl.load(gp_ptr + (b * Dm + d[:, None]) * L + s[None, :], mask=md[:, None] & (s < L)[None, :], other=0.0)
        wk = tl.load(w_ptr + d * s_wd + (K - 1 - j) * s_wk, mask=md, other=0.0).to(tl.float32)
        dx += wk[:, None] * gv
    o = dx_ptr + b * s_db + d[:, None] * s_dd + t[None, :] * s_dl
    tl.store(o, dx.to(dx_ptr.dtype.element_ty), mask=md[:, None] & (t < L)[None, :])
