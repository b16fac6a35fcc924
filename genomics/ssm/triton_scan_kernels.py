"""Triton kernels of the Mamba-1 selective scan (issue 14): forward and recompute backward, chunked over time.

Imports triton at module level: load it through genomics.ssm.triton_scan, which imports this file only when a
Triton backend is used (the package imports without triton). Math as genomics.ssm.reference.selective_scan_ref
(Gu & Dao 2023, Alg. 2); the chunking and recompute backward follow the fused CPU kernel (kb/cpu-kernel.md,
"Backward"); the within-chunk recurrence is a parallel scan of the first-order linear recurrence (Blelloch 1990,
"Prefix sums and their applications", 1.4.1) with tl.associative_scan.

One program per (batch, block of BD channels); BD channels lie in one group of B / C. It walks the sequence in
chunks of BT steps with the state h (BD, BN) carried between chunks:

    a   = exp(delta_t A)          (BD, BN, BT)       delta = softplus(delta + bias) when asked
    bx  = delta_t u_t B_t         (BD, BN, BT)
    (P, H) = scan over t of (a, bx) with (a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)
    h_t = P_t h_chunk_start + H_t ;  y_t = sum_n h_t C_t + D u_t ;  out = y * silu(z)

Positions past L (and channels past D, states past N) load delta = 0, u = B = C = 0: a = 1, bx = 0, the identity
of the scan, so the state at the last lane of a chunk is the state after its last valid step.

Backward, per chunk from the last: the chunk's states are recomputed from the checkpoint h_chunk_start (stored by
the forward, (B, n_chunks, D, N) float32); the adjoint lam_t = dL/dh_t = dy_t C_t + a_{t+1} lam_{t+1} is a reverse
scan of (a_{t+1}, dy_t C_t), carried between chunks as lam at the chunk's first step. With a_t h_{t-1} = h_t - bx_t:
    dA += sum_t lam_t delta_t a_t h_{t-1};    d delta_t = sum_n lam_t (A a_t h_{t-1} + B_t u_t)   (x softplus')
    du_t = D dy_t + delta_t sum_n lam_t B_t;  dB_t = sum_d lam_t delta_t u_t;  dC_t = sum_d dy_t h_t
dB and dC sum over the channels of a group, which several programs own: float32 atomics into (B, G, N, L). dA, dD and
d bias are written per batch row and summed by the caller. Everything is computed in float32 (bf16 loads converted).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _linrec(a1, b1, a2, b2):
    """Composition of h -> a1 h + b1 then h -> a2 h + b2 (associative)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _delta(dt_ptrs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta before softplus, delta) at `dt_ptrs`, float32; 0 where masked (the scan's identity)."""
    pre = tl.load(dt_ptrs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        pre = pre + bias[:, None]
    dt = pre
    if SOFTPLUS:
        dt = tl.where(pre > 20.0, pre, tl.log(1.0 + tl.exp(pre)))  # torch's softplus threshold
    return pre, tl.where(mask, dt, 0.0)


@triton.jit
def scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr,
    L, Dm, N, n_chunks, ch_per_group,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_ob, s_od, s_ol,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl, s_Ad, s_An,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    d = pd * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, BN)  # (BN,)
    lane = tl.arange(0, BT)  # (BT,)
    md, mn = d < Dm, n < N
    g = (pd * BD) // ch_per_group  # the B / C group of this block
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=md[:, None] & mn[None, :], other=0.0)
    A = A.to(tl.float32)  # (BD, BN)
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=md, other=0.0).to(tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32)
    h = tl.zeros([BD, BN], dtype=tl.float32)  # state carried between chunks
    for c in range(n_chunks):
        if SAVE:  # the state before chunk c, for the backward's recompute
            ck = ckpt_ptr + ((b * n_chunks + c) * Dm + d[:, None]) * N + n[None, :]
            tl.store(ck, h, mask=md[:, None] & mn[None, :])
        t = c * BT + lane
        mt = t < L
        m2 = md[:, None] & mt[None, :]  # (BD, BT)
        u = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        _, dt = _delta(dt_ptr + b * s_tb + d[:, None] * s_td + t[None, :] * s_tl, m2, bias, HAS_BIAS, SOFTPLUS)
        mnt = mn[:, None] & mt[None, :]  # (BN, BT)
        Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n[:, None] * s_Bn + t[None, :] * s_Bl, mask=mnt, other=0.0)
        Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n[:, None] * s_Cn + t[None, :] * s_Cl, mask=mnt, other=0.0)
        a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, BN, BT)
        bx = (dt * u)[:, None, :] * Bv.to(tl.float32)[None, :, :]  # (BD, BN, BT)
        P, H = tl.associative_scan((a, bx), axis=2, combine_fn=_linrec)
        hs = P * h[:, :, None] + H  # states h_t, (BD, BN, BT)
        y = tl.sum(hs * Cv.to(tl.float32)[None, :, :], axis=1)  # (BD, BT)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            z = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0)
            z = z.to(tl.float32)
            y = y * z * tl.sigmoid(z)
        o = out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol
        tl.store(o, y.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where((lane == BT - 1)[None, None, :], hs, 0.0), axis=2)  # state after the chunk


@triton.jit
def scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, g_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, y_ptr,
    L, Dm, N, n_chunks, ch_per_group, G,
    s_ub, s_ud, s_ul, s_tb, s_td, s_tl, s_zb, s_zd, s_zl, s_gb, s_gd, s_gl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl, s_Ad, s_An, s_yb, s_yd, s_yl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE_Y: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr, BT: tl.constexpr,
):  # fmt: skip
    """Gradients: du, ddt, dz (B, D, L) contiguous, in their inputs' dtypes; dA (B, D, N), dD, dbias (B, D) float32
    per batch row; dB, dC (B, G, N, L) float32, zeroed by the caller (atomic adds). With SAVE_Y also the forward's
    (gated) output, recomputed, into y (strides s_y*; for out_proj's weight gradient)."""
    b = tl.program_id(0).to(tl.int64)
    pd = tl.program_id(1)
    d = pd * BD + tl.arange(0, BD)
    n = tl.arange(0, BN)
    lane = tl.arange(0, BT)
    md, mn = d < Dm, n < N
    mdn = md[:, None] & mn[None, :]
    g = (pd * BD) // ch_per_group
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=mdn, other=0.0).to(tl.float32)  # (BD, BN)
    Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=md, other=0.0).to(tl.float32)
    bias = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=md, other=0.0).to(tl.float32)
    dA = tl.zeros([BD, BN], dtype=tl.float32)
    dD = tl.zeros([BD], dtype=tl.float32)
    dbias = tl.zeros([BD], dtype=tl.float32)
    lam_next = tl.zeros([BD, BN], dtype=tl.float32)  # lam at the first step of the chunk after this one
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * BT + lane
        mt = t < L
        m2 = md[:, None] & mt[None, :]
        mnt = mn[:, None] & mt[None, :]
        h0 = tl.load(ckpt_ptr + ((b * n_chunks + c) * Dm + d[:, None]) * N + n[None, :], mask=mdn, other=0.0)
        u = tl.load(u_ptr + b * s_ub + d[:, None] * s_ud + t[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        dt_ptrs = dt_ptr + b * s_tb + d[:, None] * s_td + t[None, :] * s_tl
        pre, dt = _delta(dt_ptrs, m2, bias, HAS_BIAS, SOFTPLUS)
        Bv = tl.load(B_ptr + b * s_Bb + g * s_Bg + n[:, None] * s_Bn + t[None, :] * s_Bl, mask=mnt, other=0.0)
        Cv = tl.load(C_ptr + b * s_Cb + g * s_Cg + n[:, None] * s_Cn + t[None, :] * s_Cl, mask=mnt, other=0.0)
        Bv, Cv = Bv.to(tl.float32), Cv.to(tl.float32)
        a = tl.exp(dt[:, None, :] * A[:, :, None])  # (BD, BN, BT)
        bx = (dt * u)[:, None, :] * Bv[None, :, :]
        P, H = tl.associative_scan((a, bx), axis=2, combine_fn=_linrec)
        hs = P * h0[:, :, None] + H  # recomputed states, (BD, BN, BT)
        gy = tl.load(g_ptr + b * s_gb + d[:, None] * s_gd + t[None, :] * s_gl, mask=m2, other=0.0).to(tl.float32)
        off = b * Dm * L + d[:, None] * L + t[None, :]  # contiguous (B, D, L) gradient outputs
        y = tl.sum(hs * Cv[None, :, :], axis=1)  # ungated output, (BD, BT)
        if HAS_D:
            y += Dv[:, None] * u
        yg = y
        if HAS_Z:
            z = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd + t[None, :] * s_zl, mask=m2, other=0.0)
            z = z.to(tl.float32)
            sz = tl.sigmoid(z)
            tl.store(dz_ptr + off, (gy * y * sz * (1.0 + z * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m2)
            dy = gy * z * sz
            yg = y * z * sz
        else:
            dy = gy
        if SAVE_Y:
            yo = y_ptr + b * s_yb + d[:, None] * s_yd + t[None, :] * s_yl
            tl.store(yo, yg.to(y_ptr.dtype.element_ty), mask=m2)
        _, dt1 = _delta(dt_ptrs + s_tl, m2 & (t + 1 < L)[None, :], bias, HAS_BIAS, SOFTPLUS)  # delta_{t+1}
        a1 = tl.exp(dt1[:, None, :] * A[:, :, None])  # a_{t+1}, 1 past the end
        Q, M = tl.associative_scan((a1, dy[:, None, :] * Cv[None, :, :]), axis=2, combine_fn=_linrec, reverse=True)
        lam = M + Q * lam_next[:, :, None]  # dL/dh_t, (BD, BN, BT)
        ah = hs - bx  # a_t h_{t-1}
        lam_b = tl.sum(lam * Bv[None, :, :], axis=1)  # (BD, BT)
        du = dt * lam_b
        if HAS_D:
            du += Dv[:, None] * dy
            dD += tl.sum(dy * u, axis=1)
        ddt = tl.sum(lam * ah * A[:, :, None], axis=1) + u * lam_b
        if SOFTPLUS:
            ddt = tl.where(pre > 20.0, ddt, ddt * tl.sigmoid(pre))
        ddt = tl.where(m2, ddt, 0.0)
        tl.store(du_ptr + off, du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + off, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        dA += tl.sum(lam * ah * dt[:, None, :], axis=2)
        dbias += tl.sum(ddt, axis=1)
        gofs = ((b * G + g) * N + n[:, None]) * L + t[None, :]  # (BN, BT) in (B, G, N, L)
        tl.atomic_add(dB_ptr + gofs, tl.sum(lam * (dt * u)[:, None, :], axis=0), mask=mnt)
        tl.atomic_add(dC_ptr + gofs, tl.sum(hs * dy[:, None, :], axis=0), mask=mnt)
        lam_next = tl.sum(tl.where((lane == 0)[None, None, :], lam, 0.0), axis=2)
    tl.store(dA_ptr + (b * Dm + d[:, None]) * N + n[None, :], dA, mask=mdn)
    tl.store(dD_ptr + b * Dm + d, dD, mask=md)
    tl.store(dbias_ptr + b * Dm + d, dbias, mask=md)
