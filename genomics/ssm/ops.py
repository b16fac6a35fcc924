"""Backend dispatch for the Mamba-1 selective scan, mixer inner and whole mixer.

backend:
  "auto"  -> on CUDA tensors "cuda" when mamba-ssm imports, else "triton" when triton is installed, else "torch";
             on CPU tensors "cpu" when the fused CPU kernel is available, else "torch".
  "torch" -> genomics.ssm.reference (pure PyTorch, sequential; runs everywhere, the test oracle).
  "cpu"   -> the fused CPU kernel (genomics.ssm.cpu_kernel; kb/cpu-kernel.md). It reads xz in place when its memory
             is time-major (xz = in_proj(h).transpose(1, 2)).
  "cuda"  -> mamba_ssm.ops.selective_scan_interface (the `[cuda]` extra).
  "triton"-> Triton kernels (genomics.ssm.triton_scan; kb/triton.md): needs only triton and a CUDA PyTorch, no
             compiled extension. CPU tensors only under Triton's interpreter (TRITON_INTERPRET=1; tests).
Signatures and layouts are those of mamba_ssm (channels first: (B, D, L)). `mamba_mixer` also takes in_proj: on the
"cpu" backend in inference it never materialises the (B, L, 2 * d_inner) in_proj output (tiled), elsewhere it is
in_proj followed by `mamba_inner`.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor

from genomics.ssm.reference import mamba_inner_ref, selective_scan_ref

BACKENDS = ("auto", "torch", "cpu", "cuda", "triton")


@functools.cache
def _cuda_ops():
    """mamba_ssm's kernels, or None when the package (or its compiled extension) is not importable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception:  # ImportError, or an extension built for another torch/CUDA
        return None
    return mamba_inner_fn, selective_scan_fn


@functools.cache
def _cpu_ops():
    """The fused CPU kernel's (mamba_inner, selective_scan, mamba_mixer), or None when it is not available."""
    try:
        from genomics.ssm import cpu_kernel
    except ImportError:
        return None
    return cpu_kernel.mamba_inner_cpu, cpu_kernel.selective_scan_cpu, cpu_kernel.mamba_mixer_cpu


@functools.cache
def _triton_ops():
    """The Triton backend's (mamba_inner, selective_scan), or None when triton is not installed."""
    from genomics.ssm import triton_launch

    if not triton_launch.available():
        return None
    from genomics.ssm import triton_scan

    return triton_scan.mamba_inner_triton, triton_scan.selective_scan_triton


def cuda_available() -> bool:
    return _cuda_ops() is not None


def resolve_backend(backend: str, device_type: str) -> str:
    """Turn "auto" into a concrete backend for tensors on `device_type`; check an explicit choice can run."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown SSM backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if device_type == "cuda" and _cuda_ops() is not None:
            return "cuda"
        if device_type == "cuda" and _triton_ops() is not None:
            return "triton"
        if device_type == "cpu" and _cpu_ops() is not None:
            return "cpu"
        return "torch"
    if backend == "cuda" and (device_type != "cuda" or _cuda_ops() is None):
        raise RuntimeError(
            "SSM backend 'cuda' needs tensors on a CUDA device and mamba-ssm installed (pip install '.[cuda]'); "
            "use backend='auto' or 'torch'"
        )
    if backend == "cpu" and (device_type != "cpu" or _cpu_ops() is None):
        raise RuntimeError(
            "SSM backend 'cpu' needs CPU tensors and the fused CPU kernel; use backend='auto' or 'torch'"
        )
    if backend == "triton":
        from genomics.ssm.triton_launch import device_ok

        if _triton_ops() is None or not device_ok(device_type):
            raise RuntimeError(
                "SSM backend 'triton' needs the triton package and tensors on a CUDA device (CPU tensors only under "
                "TRITON_INTERPRET=1); use backend='auto' or 'torch'"
            )
    return backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend="auto") -> Tensor:
    """Selective scan, (B, D, L) in and out; see reference.selective_scan_ref for the math."""
    backend = resolve_backend(backend, u.device.type)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if backend == "cuda":
        return _cuda_ops()[1](u, delta, A, B, C, **kwargs)
    if backend == "cpu":
        return _cpu_ops()[1](u, delta, A, B, C, **kwargs)
    if backend == "triton":
        return _triton_ops()[1](u, delta, A, B, C, **kwargs)
    return selective_scan_ref(u, delta, A, B, C, **kwargs)


def mamba_inner(
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
    backend: str = "auto",
) -> Tensor:
    """conv -> SiLU -> x_proj -> dt_proj -> softplus -> scan -> gate -> out_proj; (B, 2D, L) in, (B, L, d_model) out."""
    backend = resolve_backend(backend, xz.device.type)
    args = (xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A)
    kwargs = dict(D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if backend == "cuda":
        return _cuda_ops()[0](*args, B=None, C=None, **kwargs)
    if backend == "cpu":
        return _cpu_ops()[0](*args, **kwargs)
    if backend == "triton":
        return _triton_ops()[0](*args, **kwargs)
    return mamba_inner_ref(*args, **kwargs)


def mamba_mixer(
    hidden_states: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
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
    backend: str = "auto",
) -> Tensor:
    """The whole Mamba-1 mixer, (B, L, d_model) -> (B, L, d_model): mamba_inner(in_proj(h).transpose(1, 2), ...)."""
    backend = resolve_backend(backend, hidden_states.device.type)
    rest = (conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias, A)
    kwargs = dict(D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    if backend == "cpu":
        return _cpu_ops()[2](hidden_states, in_proj_weight, in_proj_bias, *rest, **kwargs)
    xz = F.linear(hidden_states, in_proj_weight, in_proj_bias).transpose(1, 2)  # (B, 2D, L)
    return mamba_inner(xz, *rest, **kwargs, backend=backend)
