"""Layers shared by the brain encoders (SwiFT, BrainMT), with the upstream parameter names.

    DropPath    stochastic depth per sample (Huang et al. 2016; timm's DropPath), no parameters
    Attention   multi-head self-attention: qkv (Linear dim -> 3 dim) -> scaled dot-product -> proj (Linear dim -> dim);
                SwiFT's WindowAttention4D (with its shifted-window mask) and BrainMT's Attention (no mask) are this
                module with the same keys `qkv.*`, `proj.*`

Not shared, on purpose: the two MLPs compute the same thing but carry different upstream key names (SwiFT's MONAI
MLPBlock linear1/linear2, BrainMT's timm Mlp fc1/fc2), and the two PatchEmbeds are different networks (SwiFT: one
Linear over flattened 4D patches, `fc`; BrainMT: a two-convolution stem, `conv_down`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): in training, zero a whole sample with probability p and scale
    the others by 1 / (1 - p); the identity in eval mode or when p == 0."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention (B, N, C) -> (B, N, C), optionally with an additive per-window mask.

    mask (nW, N, N): the batch is laid out as (B' * nW) windows (Swin's window_partition); window w of every sample
    gets mask[w] added to its attention logits. None: plain full attention.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = None
        if mask is not None:
            nw = mask.shape[0]
            bias = mask.to(q.dtype)[None, :, None].expand(bw // nw, -1, -1, -1, -1).reshape(bw, 1, n, n)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)  # (B, heads, N, C/heads)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))
