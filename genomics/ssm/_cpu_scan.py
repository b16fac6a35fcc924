"""Numba kernels of the Mamba-1 selective scan (Gu & Dao 2023, "Mamba", Alg. 2; mamba_ssm's selective_scan_fwd/bwd).

Layout: time-major, channels contiguous. Every (B, L, .) array is indexed a[b, t, off + c], so the x half and the z
half of the in_proj output (B, L, 2*D) and the B / C columns of x_proj's output (B, L, R + 2N) are read in place.

Forward, per batch b and block of CB channels (one parallel job each):
    delta_t = softplus(dt_t + bias)                         # (CB,); dt_t = x_dbl_t[:R] @ dt_proj.weight^T if fused
    h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t    # (N, CB): stays in L1, never (L, D, N) in memory
    y_t     = C_t . h_t + D u_t ;  out_t = y_t * silu(z_t)
The innermost loops run over the CB channels, so LLVM vectorises them (one SIMD lane per channel); exp(delta A) is
2**(delta * A log2 e) with A pre-scaled (`A2t`), see _cpu_math. When gradients are needed the forward also stores
h at the start of every `chunk` steps (ckpt, (B, L / chunk, N, D)).

Backward (reverse-mode through the recurrence), per block: for each chunk from the last, recompute h_t and
a_t = exp(delta_t A) inside the chunk from its checkpoint (buffers (chunk, N, CB), in L2), then walk back with the
adjoint lam_t = dL/dh_t = dy_t C_t + a_{t+1} lam_{t+1}:
    dA   += lam a_t h_{t-1} delta_t          ddelta_t = sum_n lam (A a_t h_{t-1} + B_t u_t)
    du_t  = D dy_t + delta_t sum_n lam B_t   dB_t     = sum_c lam delta_t u_t,  dC_t = sum_c dy_t h_t
dB / dC sum over channels, which several jobs own: each parallel partition adds into its own slice of `dbc_part`
(P, B, L, 2N), summed by the caller. Memory: O(L * D) for the outputs, O(L / chunk * N * D) checkpoints.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from genomics.ssm._cpu_math import ld, sigmoid, softplus, st, vexp2

FASTMATH = True  # needed to vectorise the channel reductions of the backward; exp/fma steps are explicit intrinsics
_JIT = dict(parallel=True, fastmath=FASTMATH, cache=True, nogil=True)


@njit(**_JIT)
def scan_fwd(
    u, u_off, dt, dtw, dt_off, fuse_dt, xbc, b_off, c_off, z, z_off, z_t0, has_z, A2t, Dv, bias, delta_softplus,
    out, h0, ckpt, ck0, chunk, save, CB, out_t0, reverse, mode,
):  # fmt: skip
    """out[b, out_t0 + t, c] = gated scan output (see module docstring), jobs of CB channels. Rows t of u, dt and
    xbc are rows z_t0 + t of z and out_t0 + t of out; the state starts from h0 (B, N, D) and is written back there
    (so a long sequence can run tile by tile); checkpoint k of this call is ckpt[b, ck0 + k]. `out` may alias `u`
    or `dt` (same rows and offsets): each element is read before it is written.
    fuse_dt: dt[b, t] = xbc[b, t, dt_off : dt_off + R] @ dtw (dtw (R, D) = dt_proj.weight^T), `dt` unused.
    reverse: the recurrence runs from the last row to the first (a reversed-direction mixer without flipping its
    input; no checkpoints). mode 0 writes the output, 1 adds it to `out`, 2 multiplies `out` by it."""
    Bt, L, _ = u.shape
    N, D = A2t.shape
    nblk = (D + CB - 1) // CB
    for job in prange(Bt * nblk):
        b, blk = job // nblk, job % nblk
        c0 = blk * CB
        w = min(CB, D - c0)
        A2, Db, bb = _block_params(A2t, Dv, bias, c0, w, CB)  # (N, CB), (CB,), (CB,)
        W = _block_cols(dtw, c0, w, CB)  # (R, CB)
        h = _block_cols(h0[b], c0, w, CB)  # state (N, CB)
        dl = np.empty(CB, A2t.dtype)  # delta_t
        dbu = np.empty(CB, A2t.dtype)  # delta_t * u_t
        y = np.empty(CB, A2t.dtype)
        for i in range(L):
            t = L - 1 - i if reverse else i
            if save and t % chunk == 0:
                ckpt[b, ck0 + t // chunk, :, c0 : c0 + w] = h[:, :w]
            ur, xr = u[b, t, u_off + c0 : u_off + c0 + w], xbc[b, t]  # row views
            _delta_pre(dt, b, t, c0, w, xr, dt_off, W, fuse_dt, bb, dl)
            for c in range(w):
                d = dl[c]
                if delta_softplus:
                    d = softplus(d)
                uv = ld(ur, c)
                dl[c] = d
                dbu[c] = d * uv
                y[c] = Db[c] * uv
            for n in range(N):
                Bn = ld(xr, b_off + n)
                Cn = ld(xr, c_off + n)
                for c in range(w):
                    hv = vexp2(dl[c] * A2[n, c]) * h[n, c] + dbu[c] * Bn
                    h[n, c] = hv
                    y[c] += hv * Cn
            outr = out[b, out_t0 + t, c0 : c0 + w]
            if has_z:
                zr = z[b, z_t0 + t, z_off + c0 : z_off + c0 + w]
                if mode == 0:
                    for c in range(w):
                        zv = ld(zr, c)
                        st(outr, c, y[c] * zv * sigmoid(zv))
                elif mode == 1:
                    for c in range(w):
                        zv = ld(zr, c)
                        st(outr, c, ld(outr, c) + y[c] * zv * sigmoid(zv))
                else:
                    for c in range(w):
                        zv = ld(zr, c)
                        st(outr, c, ld(outr, c) * (y[c] * zv * sigmoid(zv)))
            elif mode == 0:
                for c in range(w):
                    st(outr, c, y[c])
            elif mode == 1:
                for c in range(w):
                    st(outr, c, ld(outr, c) + y[c])
            else:
                for c in range(w):
                    st(outr, c, ld(outr, c) * y[c])
        h0[b, :, c0 : c0 + w] = h[:, :w]


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _delta_pre(dt, b, t, c0, w, xr, dt_off, W, fuse_dt, bias, out):
    """out[:w] = dt[b, t, c0 : c0 + w] + bias, or with fuse_dt (xr[dt_off : dt_off + R] @ W) + bias."""
    if fuse_dt:
        for c in range(w):
            out[c] = bias[c]
        for r in range(W.shape[0]):
            x = ld(xr, dt_off + r)
            for c in range(w):
                out[c] += x * W[r, c]
    else:
        dtr = dt[b, t, c0 : c0 + w]
        for c in range(w):
            out[c] = ld(dtr, c) + bias[c]


@njit(cache=True, nogil=True)
def _block_cols(M, c0, w, CB):
    """Contiguous (rows, CB) copy of M[:, c0 : c0 + w], zero padded."""
    out = np.zeros((M.shape[0], CB), M.dtype)
    out[:, :w] = M[:, c0 : c0 + w]
    return out


@njit(cache=True, nogil=True)
def _block_params(A2t, Dv, bias, c0, w, CB):
    """Contiguous per-block copies (indexing A2t[n, c0 + c] directly would defeat vectorisation, see _cpu_math)."""
    N = A2t.shape[0]
    A2 = np.zeros((N, CB), A2t.dtype)
    Db = np.zeros(CB, A2t.dtype)
    bb = np.zeros(CB, A2t.dtype)
    A2[:, :w] = A2t[:, c0 : c0 + w]
    Db[:w] = Dv[c0 : c0 + w]
    bb[:w] = bias[c0 : c0 + w]
    return A2, Db, bb


@njit(**_JIT)
def scan_bwd(
    u, u_off, dt, dtw, dt_off, fuse_dt, xbc, b_off, c_off, z, z_off, has_z, A2t, At, Dv, bias, delta_softplus,
    ckpt, chunk, gout, du, ddt, dz, dz_off, ygate, want_ygate, dbc_part, dAt, dD, dbias, CB,
):  # fmt: skip
    """Gradients of scan_fwd given gout = dL/dout (B, L, D). Writes du, ddt (w.r.t. dt before bias/softplus),
    dz (at dz_off), optionally ygate (= the forward output, for out_proj's weight gradient), adds dB / dC into
    dbc_part[p] and writes dAt (N, D), dD, dbias (D,)."""
    Bt, L, _ = u.shape
    N, D = A2t.shape
    nblk = (D + CB - 1) // CB
    nck = (L + chunk - 1) // chunk
    P = dbc_part.shape[0]
    ct = A2t.dtype
    one = np.ones(1, ct)[0]  # typed constants: a bare 1 would promote float32 arithmetic to float64
    zero = one - one
    for p in prange(P):
        Hs = np.empty((chunk + 1, N, CB), ct)  # Hs[tt + 1] = h_{t0 + tt}; Hs[0] = checkpoint
        As = np.empty((chunk, N, CB), ct)  # a_t = exp(delta_t A)
        dl = np.empty((chunk, CB), ct)  # delta_t
        uu = np.empty((chunk, CB), ct)
        yv = np.empty((chunk, CB), ct)  # y_t before the gate
        sg = np.empty((chunk, CB), ct)  # softplus'(dt + bias)
        carry = np.empty((N, CB), ct)  # a_{t+1} lam_{t+1}
        dA = np.empty((N, CB), ct)
        dbu, dy, sA, sB = np.empty(CB, ct), np.empty(CB, ct), np.empty(CB, ct), np.empty(CB, ct)
        dDacc, dbacc = np.empty(CB, ct), np.empty(CB, ct)
        for blk in range(p, nblk, P):
            c0 = blk * CB
            w = min(CB, D - c0)
            A2, Db, bb = _block_params(A2t, Dv, bias, c0, w, CB)
            Ab = _block_cols(At, c0, w, CB)
            W = _block_cols(dtw, c0, w, CB)
            dA[:, :] = 0
            dDacc[:] = 0
            dbacc[:] = 0
            for b in range(Bt):
                carry[:, :] = 0
                for ck in range(nck - 1, -1, -1):
                    t0 = ck * chunk
                    T = min(chunk, L - t0)
                    Hs[0, :, :w] = ckpt[b, ck, :, c0 : c0 + w]
                    # -- recompute the chunk forward
                    for tt in range(T):
                        t = t0 + tt
                        ur, xr = u[b, t, u_off + c0 : u_off + c0 + w], xbc[b, t]
                        _delta_pre(dt, b, t, c0, w, xr, dt_off, W, fuse_dt, bb, dbu)
                        for c in range(w):
                            d = dbu[c]
                            s = one
                            if delta_softplus:
                                s = sigmoid(d)
                                d = softplus(d)
                            uv = ld(ur, c)
                            dl[tt, c] = d
                            sg[tt, c] = s
                            uu[tt, c] = uv
                            dbu[c] = d * uv  # (overwrites the pre-activation of this c, read above)
                            yv[tt, c] = Db[c] * uv
                        for n in range(N):
                            Bn = ld(xr, b_off + n)
                            Cn = ld(xr, c_off + n)
                            for c in range(w):
                                a = vexp2(dl[tt, c] * A2[n, c])
                                hv = a * Hs[tt, n, c] + dbu[c] * Bn
                                As[tt, n, c] = a
                                Hs[tt + 1, n, c] = hv
                                yv[tt, c] += hv * Cn
                    # -- walk the chunk backward
                    for tt in range(T - 1, -1, -1):
                        t = t0 + tt
                        gr, xr = gout[b, t, c0 : c0 + w], xbc[b, t]
                        if has_z:
                            zr, dzr = z[b, t, z_off + c0 : z_off + c0 + w], dz[b, t, dz_off + c0 : dz_off + c0 + w]
                            yg = ygate[b, t, c0 : c0 + w] if want_ygate else ygate[0, 0]
                            for c in range(w):
                                g = ld(gr, c)
                                zv = ld(zr, c)
                                sz = sigmoid(zv)
                                st(dzr, c, g * yv[tt, c] * sz * (one + zv * (one - sz)))
                                dy[c] = g * zv * sz
                                if want_ygate:
                                    st(yg, c, yv[tt, c] * zv * sz)
                        else:
                            yg = ygate[b, t, c0 : c0 + w] if want_ygate else ygate[0, 0]
                            for c in range(w):
                                dy[c] = ld(gr, c)
                                if want_ygate:
                                    st(yg, c, yv[tt, c])
                        for c in range(w):
                            dDacc[c] += dy[c] * uu[tt, c]
                            dbu[c] = dl[tt, c] * uu[tt, c]
                            sA[c] = 0
                            sB[c] = 0
                        for n in range(N):
                            Bn = ld(xr, b_off + n)
                            Cn = ld(xr, c_off + n)
                            sb = zero
                            sc = zero
                            for c in range(w):
                                lam = carry[n, c] + dy[c] * Cn
                                a = As[tt, n, c]
                                wv = lam * a * Hs[tt, n, c]  # lam a_t h_{t-1}
                                dA[n, c] += wv * dl[tt, c]
                                sA[c] += wv * Ab[n, c]
                                sB[c] += lam * Bn
                                sb += lam * dbu[c]
                                sc += dy[c] * Hs[tt + 1, n, c]
                                carry[n, c] = a * lam
                            dbc_part[p, b, t, n] += sb
                            dbc_part[p, b, t, N + n] += sc
                        ddr, dur = ddt[b, t, c0 : c0 + w], du[b, t, c0 : c0 + w]
                        for c in range(w):
                            dd = (sA[c] + uu[tt, c] * sB[c]) * sg[tt, c]
                            dbacc[c] += dd
                            st(ddr, c, dd)
                            st(dur, c, Db[c] * dy[c] + dl[tt, c] * sB[c])
            dAt[:, c0 : c0 + w] = dA[:, :w]
            dD[c0 : c0 + w] = dDacc[:w]
            dbias[c0 : c0 + w] = dbacc[:w]
