"""Reverse-complement parameter sharing (RCPS): modules that make Caduceus-PS RC-equivariant.

References: Schiff et al. 2024 (Caduceus, Sec. 3.2 "MambaDNA"/RCPS); Zhou et al. 2022, "Towards a Better Understanding
of Reverse-Complement Equivariance for Deep Learning Models in Regulatory Genomics"; kuleshov-group/caduceus
`caduceus/modeling_rcps.py` (module and parameter names).

An RCPS hidden stream is (B, L, 2D): a forward half x[..., :D] and an RC half x[..., D:]. Its reverse complement is
`rc(x) = x.flip(L, C)` over all 2D channels, which swaps the halves and reverses each. Every module f here satisfies
f(rc(x)) = rc(f(x)) (ids: rc(ids) = complement_map[ids.flip(L)]), so the whole model is equivariant:
    RCPSEmbedding       ids -> cat[E(ids), rc(E(rc(ids)))]                          (B, L) -> (B, L, 2D)
    RCPSWrapper(M)      x   -> cat[M(x_f), rc(M(rc(x_r)))]                          one shared M
    RCPSAddNormWrapper  (x, res) -> norm of each half after the residual add, same sharing
    RCPSLMHead          x   -> x_f @ W^T + flip_C(x_r) @ W[complement_map]^T        (B, L, 2D) -> (B, L, V)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from genomics.alphabet import complement_table


def rc_channels(x: Tensor) -> Tensor:
    """Reverse complement of a (..., L, C) hidden tensor: flip length and channels."""
    return x.flip(-2, -1)


def stack_strands(x: Tensor) -> Tensor:
    """RCPS stream (B, L, 2D) -> (B, L, D, 2): the forward half, and the RC half flipped back to channel order (it stays
    in RC position order: position i of strand 1 reads base L-1-i)."""
    d = x.shape[-1] // 2
    return torch.stack([x[..., :d], rc_channels(x[..., d:])], dim=-1)  # (B, L, D, 2)


def swap_halves(x: Tensor) -> Tensor:
    """[x_f, x_r] -> [x_r, x_f] over the last axis."""
    d = x.shape[-1] // 2
    return torch.cat([x[..., d:], x[..., :d]], dim=-1)


class RCPSEmbedding(nn.Module):
    """Token embedding of both strands: (B, L) ids -> (B, L, 2D); the table E is (V, D)."""

    def __init__(self, vocab_size: int, d_model: int, complement_map: dict, device=None, dtype=None):
        super().__init__()
        self.register_buffer("complement_map", complement_table(vocab_size, complement_map).to(device))  # (V,)
        self.embedding = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)  # (V, D)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def rc(self, input_ids: Tensor) -> Tensor:
        """Reverse complement of ids (B, L)."""
        return self.complement_map[input_ids.flip(-1)]  # (B, L)

    def forward(self, input_ids: Tensor) -> Tensor:
        fwd = self.embedding(input_ids)  # (B, L, D)
        rc = rc_channels(self.embedding(self.rc(input_ids)))  # (B, L, D)
        return torch.cat([fwd, rc], dim=-1)  # (B, L, 2D)


class RCPSWrapper(nn.Module):
    """Run one module on the forward half and (reverse-complemented) on the RC half: (B, L, 2D) -> (B, L, 2D)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        d = x.shape[-1] // 2
        fwd = self.submodule(x[..., :d], **kwargs)  # (B, L, D)
        rc = self.submodule(rc_channels(x[..., d:]), **kwargs)  # (B, L, D), in RC order
        return torch.cat([fwd, rc_channels(rc)], dim=-1)  # (B, L, 2D)


def rcps_add_norm(norm: nn.Module, x: Tensor, residual: Tensor | None, residual_in_fp32: bool = False):
    """Add-norm of an RCPS stream: per half, res = x + residual; out = norm(res), the RC half normed in RC order.

    Returns (out (B, L, 2D) in norm's dtype, res (B, L, 2D)). `residual=None` (first layer) means res = x.
    """
    res = x if residual is None else x + residual  # (B, L, 2D); rc(a) + rc(b) = rc(a + b)
    if residual_in_fp32:
        res = res.float()
    d = res.shape[-1] // 2
    dtype = norm.weight.dtype
    fwd = norm(res[..., :d].to(dtype))  # (B, L, D)
    rc = norm(rc_channels(res[..., d:]).to(dtype))  # (B, L, D), in RC order
    return torch.cat([fwd, rc_channels(rc)], dim=-1), res  # (B, L, 2D) each


class RCPSAddNormWrapper(RCPSWrapper):
    """RCPS add + norm (one shared norm of width D): (x, residual) -> normed, or (normed, residual) with prenorm."""

    def forward(self, x: Tensor, residual: Tensor | None = None, prenorm: bool = False, residual_in_fp32=False):
        out, res = rcps_add_norm(self.submodule, x, residual, residual_in_fp32)  # (B, L, 2D) each
        return (out, res) if prenorm else out


class RCPSLMHead(nn.Module):
    """LM head over an RCPS stream, weight tied to the embedding table: (B, L, 2D) -> (B, L, V).

    Forward-half logits use W; the RC half (channels flipped back) scores the complement of each token, W[cmap].
    """

    def __init__(self, true_dim: int, vocab_size: int, complement_map: dict, device=None, dtype=None):
        super().__init__()
        self.true_dim = true_dim
        self.register_buffer("complement_map", complement_table(vocab_size, complement_map).to(device))  # (V,)
        self.lm_head = nn.Linear(true_dim, vocab_size, bias=False, device=device, dtype=dtype)  # W (V, D)

    @property
    def weight(self) -> nn.Parameter:
        return self.lm_head.weight

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != 2 * self.true_dim:
            raise ValueError(f"RCPSLMHead expects {2 * self.true_dim} channels, got {x.shape[-1]}")
        d = self.true_dim
        fwd = F.linear(x[..., :d], self.weight)  # (B, L, V)
        rc = F.linear(x[..., d:].flip(-1), self.weight[self.complement_map])  # (B, L, V)
        return fwd + rc  # (B, L, V)
