"""The fused CPU kernel (genomics.ssm.cpu_kernel) against the pure-PyTorch reference: values, gradients, dtypes.

The first run compiles the numba kernels (about a minute for the three dtypes); later runs load them from the JIT
cache next to the sources.
"""

import math

import numpy as np
import pytest
import torch
from numba import njit

from genomics.ssm import _cpu_launch, cpu_kernel, ops
from genomics.ssm._cpu_math import sigmoid, softplus, vexp, vexp2
from genomics.ssm.reference import mamba_inner_ref, selective_scan_ref


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Checkpoint every 8 steps and run the forward in tiles of 24 rows, so that short sequences cross several
    chunks in the backward and several tiles (state carried over) in the forward."""
    monkeypatch.setattr(_cpu_launch, "CHUNK", 8)
    monkeypatch.setattr(cpu_kernel, "FWD_TILE", 24)


def _scan_inputs(batch, d_inner, d_state, length, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    return dict(
        u=r(batch, d_inner, length),
        delta=r(batch, d_inner, length, scale=0.5),
        A=-torch.rand(d_inner, d_state, generator=g).to(dtype) * 3,
        B=r(batch, d_state, length),
        C=r(batch, d_state, length),
        D=r(d_inner),
        z=r(batch, d_inner, length),
        delta_bias=r(d_inner, scale=0.3),
    )


def _inner_inputs(batch, d_model, length, d_state=4, rank=3, k=4, dtype=torch.float32, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    d_inner = 2 * d_model

    def r(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    return dict(
        xz=r(batch, 2 * d_inner, length, scale=1.0),
        conv1d_weight=r(d_inner, 1, k),
        conv1d_bias=r(d_inner),
        x_proj_weight=r(rank + 2 * d_state, d_inner),
        delta_proj_weight=r(d_inner, rank),
        out_proj_weight=r(d_model, d_inner),
        out_proj_bias=r(d_model) if bias else None,
        A=-torch.rand(d_inner, d_state, generator=g).to(dtype) * 3,
        D=r(d_inner),
        delta_bias=r(d_inner),
    )


def _close(a, b, rtol, atol_rel):
    """|a - b| <= rtol |b| + atol_rel * max|b| elementwise."""
    b = b.float()
    assert torch.allclose(a.float(), b, rtol=rtol, atol=atol_rel * b.abs().max().item()), (a - b).abs().max()


# ------------------------------------------------------------------------------------------------------- math


@njit(fastmath=True)
def _apply(fn_id, x, out):
    for i in range(x.size):
        if fn_id == 0:
            out[i] = vexp2(x[i])
        elif fn_id == 1:
            out[i] = vexp(x[i])
        elif fn_id == 2:
            out[i] = softplus(x[i])
        else:
            out[i] = sigmoid(x[i])


@pytest.mark.parametrize(
    "fn_id,ref,tol",
    [
        (0, np.exp2, 1.5e-7),
        (1, np.exp, 2e-7),
        (2, lambda v: np.logaddexp(0, v), 3e-7),
        (3, lambda v: 1 / (1 + np.exp(-v)), 3e-7),
    ],
)
def test_vectorised_math_accuracy(fn_id, ref, tol):
    x = np.linspace(-60, 60, 200_001).astype(np.float32)
    out = np.empty_like(x)
    _apply(fn_id, x, out)
    r = ref(x.astype(np.float64))
    m = r > 1e-30
    assert np.max(np.abs(out[m] - r[m]) / r[m]) < tol



def _assert_same_gradients(ours_fn, ref_fn, x, rtol=1e-4, atol=1e-5):
    """Run both functions on fresh leaf copies of x, back-propagate one cotangent, compare every input's gradient."""
    ours = {k: v.clone().requires_grad_() for k, v in x.items()}
    refs = {k: v.clone().requires_grad_() for k, v in x.items()}
    out, ref = ours_fn(**ours), ref_fn(**refs)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for k in x:
        assert ours[k].grad.shape == refs[k].grad.shape, k
        _close(ours[k].grad, refs[k].grad, rtol, atol)
    return out, ref


# ------------------------------------------------------------------------------------------------- selective scan


@pytest.mark.parametrize("batch,d_inner,d_state,length", [(2, 37, 16, 29), (1, 72, 8, 1), (3, 8, 4, 64)])
@pytest.mark.parametrize("with_extras", [True, False])
def test_scan_forward_matches_reference(batch, d_inner, d_state, length, with_extras):
    x = _scan_inputs(batch, d_inner, d_state, length)
    if not with_extras:
        x.update(D=None, z=None, delta_bias=None)
    softplus_ = with_extras
    with torch.no_grad():
        out = cpu_kernel.selective_scan_cpu(**x, delta_softplus=softplus_)
    ref = selective_scan_ref(**x, delta_softplus=softplus_)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    _close(out, ref, 1e-5, 1e-6)


def test_scan_gradients_match_reference():
    x = _scan_inputs(2, 37, 16, 43)
    out, ref = _assert_same_gradients(
        lambda **a: cpu_kernel.selective_scan_cpu(**a, delta_softplus=True),
        lambda **a: selective_scan_ref(**a, delta_softplus=True),
        x,
    )
    _close(out.detach(), ref.detach(), 1e-5, 1e-6)


def test_scan_gradcheck_float64():
    x = _scan_inputs(1, 3, 2, 19, dtype=torch.float64)
    names = list(x)
    inputs = tuple(x[k].requires_grad_() for k in names)

    def f(*args):
        return cpu_kernel.selective_scan_cpu(**dict(zip(names, args)), delta_softplus=True)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- mamba inner


@pytest.mark.parametrize("batch,d_model,length,bias", [(2, 20, 37, True), (1, 8, 1, False), (1, 36, 130, True)])
def test_inner_forward_matches_reference(batch, d_model, length, bias):
    x = _inner_inputs(batch, d_model, length, bias=bias)
    with torch.no_grad():
        out = cpu_kernel.mamba_inner_cpu(**x)
    ref = mamba_inner_ref(**x)
    assert out.shape == ref.shape == (batch, length, d_model)
    _close(out, ref, 1e-5, 1e-6)


def test_inner_reads_time_major_and_channels_major_xz():
    x = _inner_inputs(2, 12, 33)
    ref = mamba_inner_ref(**x)
    time_major = x["xz"].transpose(1, 2).contiguous().transpose(1, 2)  # what Mamba passes: in_proj(h).transpose
    with torch.no_grad():
        _close(cpu_kernel.mamba_inner_cpu(**x), ref, 1e-5, 1e-6)
        _close(cpu_kernel.mamba_inner_cpu(**(x | {"xz": time_major})), ref, 1e-5, 1e-6)


def test_inner_gradients_match_reference():
    x = _inner_inputs(2, 20, 45)
    _assert_same_gradients(cpu_kernel.mamba_inner_cpu, mamba_inner_ref, x)


def test_inner_gradcheck_float64():
    x = _inner_inputs(1, 2, 11, d_state=2, rank=2, dtype=torch.float64)
    names = list(x)
    inputs = tuple(x[k].requires_grad_() for k in names)

    def f(*args):
        return cpu_kernel.mamba_inner_cpu(**dict(zip(names, args)))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_inference_mode_saves_nothing_and_matches():
    x = _inner_inputs(1, 16, 50)
    ref = mamba_inner_ref(**x)
    params = {k: v.clone().requires_grad_() for k, v in x.items() if k != "xz"}
    with torch.inference_mode():
        out = cpu_kernel.mamba_inner_cpu(x["xz"], **params)
    assert not out.requires_grad and out.grad_fn is None
    _close(out, ref, 1e-5, 1e-6)


def test_bf16_input_computes_in_float32():
    x = _inner_inputs(2, 16, 40, dtype=torch.bfloat16)
    with torch.no_grad():
        out = cpu_kernel.mamba_inner_cpu(**x)
    ref = mamba_inner_ref(**{k: None if v is None else v.float() for k, v in x.items()})
    assert out.dtype == torch.bfloat16
    # bf16 rounding of xs, delta, x_dbl and y between the matmuls: a few bf16 ulps (2**-8) of the output scale
    _close(out, ref, 2e-2, 2e-2)
    xs = _scan_inputs(2, 16, 4, 30, dtype=torch.bfloat16)
    with torch.no_grad():
        y = cpu_kernel.selective_scan_cpu(**xs, delta_softplus=True)
    yr = selective_scan_ref(**{k: v.float() for k, v in xs.items()}, delta_softplus=True)
    assert y.dtype == torch.bfloat16
    _close(y, yr, 1e-2, 1e-2)  # only the output is rounded to bf16


def test_bf16_backward_runs_and_is_close():
    x = _inner_inputs(1, 16, 40, dtype=torch.bfloat16)
    ours = {k: v.clone().requires_grad_() for k, v in x.items()}
    refs = {k: v.float().requires_grad_() for k, v in x.items()}
    out = cpu_kernel.mamba_inner_cpu(**ours)
    ref = mamba_inner_ref(**refs)
    g = torch.randn(ref.shape)
    out.backward(g.bfloat16())
    ref.backward(g)
    for k in x:
        assert ours[k].grad.dtype == torch.bfloat16
        _close(ours[k].grad, refs[k].grad, 1e-1, 5e-2)


# ------------------------------------------------------------------------------------------------- whole mixer


def _mixer_inputs(batch, d_model, length, dtype=torch.float32, in_bias=True):
    x = _inner_inputs(batch, d_model, length, dtype=dtype)
    g = torch.Generator().manual_seed(5)
    xz = x.pop("xz")
    hidden = torch.randn(batch, length, d_model, generator=g).to(dtype)
    w_in = (torch.randn(xz.shape[1], d_model, generator=g) * 0.3).to(dtype)
    b_in = (torch.randn(xz.shape[1], generator=g) * 0.3).to(dtype) if in_bias else None
    return dict(hidden_states=hidden, in_proj_weight=w_in, in_proj_bias=b_in, **{
        "conv1d_weight": x["conv1d_weight"], "conv1d_bias": x["conv1d_bias"], "x_proj_weight": x["x_proj_weight"],
        "delta_proj_weight": x["delta_proj_weight"], "out_proj_weight": x["out_proj_weight"],
        "out_proj_bias": x["out_proj_bias"], "A": x["A"], "D": x["D"], "delta_bias": x["delta_bias"],
    })  # fmt: skip


def _mixer_ref(hidden_states, in_proj_weight, in_proj_bias, **rest):
    xz = torch.nn.functional.linear(hidden_states, in_proj_weight, in_proj_bias).transpose(1, 2)
    return mamba_inner_ref(xz, **rest)


@pytest.mark.parametrize("batch,length,in_bias", [(2, 61, True), (1, 5, False), (1, 24, True)])
def test_mixer_tiled_in_proj_matches_reference(batch, length, in_bias):
    x = _mixer_inputs(batch, 12, length, in_bias=in_bias)  # tiles of 24 rows: the conv history crosses tiles
    with torch.no_grad():
        out = cpu_kernel.mamba_mixer_cpu(**x)
        _close(ops.mamba_mixer(**x, backend="torch"), _mixer_ref(**x), 1e-6, 1e-7)
    _close(out, _mixer_ref(**x), 1e-5, 1e-6)
    view = torch.randn(batch, length, 40)[..., 3:15]  # a strided view as input, as RCPS passes its halves
    with torch.no_grad():
        _close(cpu_kernel.mamba_mixer_cpu(**(x | {"hidden_states": view})), _mixer_ref(**(x | {"hidden_states": view})),
               1e-5, 1e-6)  # fmt: skip


def test_mixer_gradients_match_reference():
    x = _mixer_inputs(2, 10, 30)
    _assert_same_gradients(lambda **a: ops.mamba_mixer(**a, backend="cpu"), _mixer_ref, x)


# ------------------------------------------------------------------------------- bidirectional mixer, add-norm


def _direction_args(x):
    return (x["conv1d_weight"], x["conv1d_bias"], x["x_proj_weight"], x["delta_proj_weight"], x["delta_bias"],
            x["A"], x["D"])  # fmt: skip


@pytest.mark.parametrize("strategy", ["add", "ew_multiply"])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("batch,length", [(2, 61), (5, 7), (1, 1)])
def test_bimamba_equals_two_reference_mixers(strategy, combine, batch, length):
    """out = mixer_f(h) (+|*) flip(mixer_r(flip(h))) with shared in/out projections, one mixer reversed by indexing;
    also written into a strided view (an RCPS half) in place of its input, and with one direction only."""
    xf, xr = _mixer_inputs(batch, 12, length), _inner_inputs(batch, 12, length, seed=9)
    shared = {k: xf[k] for k in ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")}
    rest_r = {k: xr[k] for k in ("conv1d_weight", "conv1d_bias", "x_proj_weight", "delta_proj_weight", "A", "D",
                                 "delta_bias")}  # fmt: skip
    h = xf["hidden_states"]
    f = _mixer_ref(**xf)
    r = _mixer_ref(**(xf | rest_r | {"hidden_states": h.flip(1)})).flip(1)
    ref = f + r if strategy == "add" else f * r
    sd = torch.float32
    df = cpu_kernel.Direction(*_direction_args(xf), sd)
    dr = cpu_kernel.Direction(*_direction_args(xr), sd)
    args = (shared["in_proj_weight"], shared["in_proj_bias"], df, dr, shared["out_proj_weight"],
            shared["out_proj_bias"])  # fmt: skip
    out = torch.empty_like(f)
    cpu_kernel.bimamba_cpu(h, out, *args[:2], df, dr, *args[4:], strategy, combine=combine, workspace={})
    _close(out, ref, 1e-5, 1e-6)
    stream = torch.randn(batch, length, 24)
    stream[..., 12:] = h
    cpu_kernel.bimamba_cpu(stream[..., 12:], stream[..., 12:], *args[:2], df, dr, *args[4:], strategy, combine=combine)
    _close(stream[..., 12:], ref, 1e-5, 1e-6)
    only_rev = torch.empty_like(f)
    cpu_kernel.bimamba_cpu(h, only_rev, *args[:2], None, dr, *args[4:], strategy)
    _close(only_rev, r, 1e-5, 1e-6)


@pytest.mark.parametrize("rms", [True, False])
@pytest.mark.parametrize("s_add,sel", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_norm_kernel(rms, s_add, sel, dtype):
    g = torch.Generator().manual_seed(0)
    h, r = torch.randn(3, 7, 20, generator=g).to(dtype), torch.randn(3, 7, 20, generator=g).to(dtype)
    w, b = torch.randn(2, 10, generator=g), torch.randn(2, 10, generator=g)
    swap = lambda x: torch.cat([x[..., 10:], x[..., :10]], -1)  # noqa: E731
    res = r + (swap(h) if s_add else h)
    halves = [res[..., :10], res[..., 10:]]
    src = [halves[sel], halves[1 - sel]]

    def norm(x, k):
        x = x.float()
        if rms:
            return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-5) * w[k]
        return torch.nn.functional.layer_norm(x, (10,), w[k], b[k], 1e-5)

    expected = torch.cat([norm(src[0], 0), norm(src[1], 1)], -1).to(dtype)
    hh, rr = h.clone(), r.clone()
    _cpu_launch.run_add_norm(hh, rr, True, s_add, sel, w, b, 1e-5, rms)
    assert torch.equal(rr, res)
    _close(hh, expected, 1e-2 if dtype == torch.bfloat16 else 1e-5, 1e-2 if dtype == torch.bfloat16 else 1e-6)
    hh, rr = h.clone(), torch.empty_like(r)
    _cpu_launch.run_add_norm(hh, rr, False, 0, 0, w, b, 1e-5, rms)
    assert torch.equal(rr, h)


# ---------------------------------------------------------------------------------------------------- dispatch


def test_ops_auto_uses_cpu_kernel_on_cpu():
    assert ops.resolve_backend("auto", "cpu") == "cpu"
    x = _inner_inputs(1, 8, 20)
    with torch.no_grad():
        _close(ops.mamba_inner(**x, backend="cpu"), ops.mamba_inner(**x, backend="torch"), 1e-5, 1e-6)
    s = _scan_inputs(1, 8, 4, 20)
    with torch.no_grad():
        _close(ops.selective_scan(**s, delta_softplus=True), selective_scan_ref(**s, delta_softplus=True), 1e-5, 1e-6)


def _fork_child(queue, args, expected):
    torch.set_num_threads(1)  # as DataLoader workers do: torch's own OpenMP pool does not survive a fork
    with torch.no_grad():
        out = cpu_kernel.mamba_inner_cpu(**args)
    queue.put(((out - expected).abs().max() / expected.abs().max()).item())


def test_kernels_run_in_a_forked_child():
    import multiprocessing

    import numba

    x = _inner_inputs(1, 8, 40)
    with torch.no_grad():
        expected = cpu_kernel.mamba_inner_cpu(**x)  # the parent's numba pool is up
    if numba.threading_layer() != "workqueue":
        pytest.skip("only the workqueue layer is known to be fork-safe here")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_fork_child, args=(queue, x, expected))
    child.start()
    try:
        # the child's torch runs 1 thread, the parent's N: matmuls may round differently (3e-8 seen on AMD EPYC)
        assert queue.get(timeout=60) <= 1e-6
    finally:
        child.kill()
        child.join()


def test_threads_follow_torch():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            cpu_kernel.mamba_inner_cpu(**_inner_inputs(1, 8, 10))
        import numba

        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
    assert math.isfinite(n)
