"""SwiFT: Swin 4D fMRI Transformer over (X, Y, Z, T) volumes with 4D shifted windows.

References: Kim et al. 2023, "SwiFT: Swin 4D fMRI Transformer" (NeurIPS); Liu et al. 2021 (Swin);
Transconnectome/SwiFT `project/module/models/swin4d_transformer_ver7.py`, `patchembedding.py` (0b07cb1) for names,
shapes and the window/shift/mask arithmetic.

    x (B, 1, X, Y, Z, T) -> patch_embed: Linear over [6, 6, 6, 1] patches (216 -> C)    # (B, C, 16, 16, 16, T)
    for stage i: + pos_embeds[i].pos_embed (1, C, d, h, w, 1) + time_embed (1, C, 1, 1, 1, T)
                 -> blocks (pre-LN window attention in 4D windows, every second block shifted by half a window;
                    no relative position bias) -> PatchMergingV2 (spatial 2x2x2 -> LayerNorm(8C) -> Linear(8C, 2C))
    last stage: full attention over space (windows = the whole 2x2x2 grid, 4 frames, no shift) when last_layer_full_MSA
    output (B, 8C, 2, 2, 2, T); embedding = mean over all tokens (the final `norm` is in the state dict but unused).
Released models: embed 36, depths 2,2,6,2, heads 3,6,12,24, windows 4,4,4,4, patch 6,6,6,1, 96^3 x 20
(4,315,212 parameters, 165 keys). Checkpoints: Lightning .ckpt, backbone under `model.*`, heads under `output_head.*`.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brain.models.common import WindowAveragingEncoder
from brain.models.layers import Attention, DropPath
from genomics.checkpoints import load_strict, strip_prefix, torch_load

log = logging.getLogger(__name__)


def window_partition(x: Tensor, ws: Sequence[int]) -> Tensor:
    """(B, D, H, W, T, C) -> (B * windows, ws0*ws1*ws2*ws3, C)."""
    b, d, h, w, t, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], t // ws[3], ws[3], c)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6, 8, 9).reshape(-1, ws[0] * ws[1] * ws[2] * ws[3], c)


def window_reverse(windows: Tensor, ws: Sequence[int], dims: Sequence[int]) -> Tensor:
    """(B * windows, ws..., C) -> (B, D, H, W, T, C)."""
    b, d, h, w, t = dims
    x = windows.view(b, d // ws[0], h // ws[1], w // ws[2], t // ws[3], ws[0], ws[1], ws[2], ws[3], -1)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4, 8, 9).reshape(b, d, h, w, t, -1)


def clamp_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[tuple, tuple]:
    """An axis no longer than its window gets the whole axis as window and no shift (upstream get_window_size)."""
    ws, ss = list(window), list(shift)
    for i, n in enumerate(size):
        if n <= window[i]:
            ws[i], ss[i] = n, 0
    return tuple(ws), tuple(ss)


def shifted_window_mask(dims: Sequence[int], ws: Sequence[int], ss: Sequence[int], device) -> Tensor:
    """(windows, N, N) additive mask: -100 between tokens from different regions after the cyclic shift."""
    img = torch.zeros((1, *dims, 1), device=device)
    regions = [(slice(-w), slice(-w, -s), slice(-s, None)) for w, s in zip(ws, ss)]
    for cnt, (a, b, c, d) in enumerate(itertools.product(*regions)):
        img[:, a, b, c, d, :] = cnt
    ids = window_partition(img, ws).squeeze(-1)  # (windows, N)
    mask = ids.unsqueeze(1) - ids.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class PatchEmbed(nn.Module):
    """Non-overlapping 4D patches, flattened in (sH, sW, sD, sT, C) order and projected:
    (B, C, X, Y, Z, T) -> (B, E, d, h, w, T).

    Upstream's name, but not BrainMT's PatchEmbed (a convolution stem with other keys): one Linear `fc` over patches.
    """

    def __init__(self, img_size: Sequence[int], patch_size: Sequence[int], in_chans: int, embed_dim: int):
        super().__init__()
        if patch_size[3] != 1:
            raise ValueError("temporal patching is not implemented upstream (patch_size[3] must be 1)")
        self.img_size, self.patch_size, self.embed_dim = tuple(img_size), tuple(patch_size), embed_dim
        self.grid_size = tuple(img_size[i] // patch_size[i] for i in range(3))
        self.fc = nn.Linear(in_chans * patch_size[0] * patch_size[1] * patch_size[2] * patch_size[3], embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *space, t = x.shape
        if tuple(space) != self.img_size[:3]:
            raise ValueError(f"SwiFT expects volumes of {self.img_size[:3]}, got {tuple(space)}")
        (gh, gw, gd), (sh, sw, sd, st) = self.grid_size, self.patch_size
        x = x.view(b, c, gh, sh, gw, sw, gd, sd, -1, st)
        x = x.permute(0, 2, 4, 6, 8, 3, 5, 7, 9, 1).reshape(-1, sh * sw * sd * st * c)
        x = self.fc(x).view(b, gh, gw, gd, -1, self.embed_dim)
        return x.permute(0, 5, 1, 2, 3, 4)  # (B, E, d, h, w, T)


class PositionalEmbedding(nn.Module):
    """Absolute learned embeddings: spatial (1, C, d, h, w, 1) and temporal (1, C, 1, 1, 1, T), truncated as needed."""

    def __init__(self, dim: int, grid: Sequence[int]):
        super().__init__()
        d, h, w, t = grid
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, d, h, w, 1))
        self.time_embed = nn.Parameter(torch.zeros(1, dim, 1, 1, 1, t))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.time_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, d, h, w, T)
        return x + self.pos_embed + self.time_embed[..., : x.shape[-1]]


class MLPBlock(nn.Module):
    """MONAI MLPBlock names: linear1 -> GELU -> dropout -> linear2 -> dropout (the same dropout, "swin" mode).

    Same math as BrainMT's Mlp, kept apart for the upstream key names (linear1/linear2 here, fc1/fc2 there).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.linear2(self.drop(F.gelu(self.linear1(x)))))


class SwinTransformerBlock4D(nn.Module):
    def __init__(
        self,
        dim,
        num_heads,
        window_size,
        shift_size,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
    ):
        super().__init__()
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)  # upstream WindowAttention4D
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), drop)

    def attention(self, x: Tensor, mask: Tensor | None) -> Tensor:  # (B, D, H, W, T, C)
        b, d, h, w, t, c = x.shape
        ws, ss = clamp_window((d, h, w, t), self.window_size, self.shift_size)
        x = self.norm1(x)
        pads = [(ws[i] - n % ws[i]) % ws[i] for i, n in enumerate((d, h, w, t))]
        x = F.pad(x, (0, 0, 0, pads[3], 0, pads[2], 0, pads[1], 0, pads[0]))
        dims = (b, *x.shape[1:5])
        shifted = any(s > 0 for s in ss)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in ss), dims=(1, 2, 3, 4))
        x = self.attn(window_partition(x, ws), mask if shifted else None)  # (B*nW, N, C)
        x = window_reverse(x.view(-1, *ws, c), ws, dims)
        if shifted:
            x = torch.roll(x, shifts=ss, dims=(1, 2, 3, 4))
        return x[:, :d, :h, :w, :t].contiguous()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.drop_path(self.attention(x, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMergingV2(nn.Module):
    """Spatial 2x2x2 merge (time untouched): concat 8 neighbours -> LayerNorm(8C) -> Linear(8C, m*C, no bias)."""

    def __init__(self, dim: int, c_multiplier: int = 2):
        super().__init__()
        self.reduction = nn.Linear(8 * dim, c_multiplier * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, D, H, W, T, C)
        parts = [x[:, i::2, j::2, k::2] for i, j, k in itertools.product(range(2), repeat=3)]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks (alternately unshifted / shifted unless full_attention) + optional merging."""

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        window_size,
        drop_path,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop=0.0,
        attn_drop=0.0,
        c_multiplier=2,
        downsample=False,
        full_attention=False,
    ):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(0 for _ in window_size) if full_attention else tuple(w // 2 for w in window_size)
        no_shift = tuple(0 for _ in window_size)
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock4D(
                    dim,
                    num_heads,
                    window_size,
                    no_shift if i % 2 == 0 else self.shift_size,
                    mlp_ratio,
                    qkv_bias,
                    drop,
                    attn_drop,
                    drop_path[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMergingV2(dim, c_multiplier) if downsample else None

    def forward(self, x: Tensor) -> Tensor:  # (B, C, D, H, W, T)
        b, c, d, h, w, t = x.shape
        ws, ss = clamp_window((d, h, w, t), self.window_size, self.shift_size)
        x = x.permute(0, 2, 3, 4, 5, 1)  # (B, D, H, W, T, C)
        mask = None
        if any(s > 0 for s in ss):
            padded = [-(-n // k) * k for n, k in zip((d, h, w, t), ws)]
            mask = shifted_window_mask(padded, ws, ss, x.device)
        for block in self.blocks:
            x = block(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 5, 1, 2, 3, 4)  # (B, C', D', H', W', T)


class SwinTransformer4D(nn.Module):
    """Upstream SwinTransformer4D (ver7) without heads: (B, in_chans, X, Y, Z, T) -> (B, C_last, d, h, w, T)."""

    def __init__(
        self,
        img_size=(96, 96, 96, 20),
        in_chans=1,
        embed_dim=36,
        window_size=(4, 4, 4, 4),
        first_window_size=(4, 4, 4, 4),
        patch_size=(6, 6, 6, 1),
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        c_multiplier=2,
        last_layer_full_MSA=True,
    ):
        super().__init__()
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        grid = [img_size[i] // patch_size[i] for i in range(4)]
        self.pos_embeds = nn.ModuleList()
        dim = embed_dim
        for _ in range(self.num_layers):
            self.pos_embeds.append(PositionalEmbedding(dim, grid))
            dim, grid = dim * c_multiplier, [grid[0] // 2, grid[1] // 2, grid[2] // 2, grid[3]]
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        last = self.num_layers - 1
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            ws = first_window_size if i == 0 else window_size
            full = i == last and last_layer_full_MSA
            if full:  # the whole spatial grid of the last stage, window_size[3] frames
                g = self.patch_embed.grid_size
                ws = (g[0] // 2**last, g[1] // 2**last, g[2] // 2**last, window_size[3])
            self.layers.append(
                BasicLayer(
                    embed_dim * c_multiplier**i,
                    depths[i],
                    num_heads[i],
                    ws,
                    dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    mlp_ratio,
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    c_multiplier,
                    downsample=i < last,
                    full_attention=full,
                )
            )
        self.num_features = embed_dim * c_multiplier**last
        self.norm = nn.LayerNorm(self.num_features)  # in the state dict, unused by the forward (as upstream)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pos_drop(self.patch_embed(x.float()))  # (B, C, d, h, w, T)
        for pos, layer in zip(self.pos_embeds, self.layers):
            x = layer(pos(x).contiguous())
        return x  # (B, C_last, d/8, h/8, w/8, T)


ARCH_KEYS = (
    "img_size",
    "in_chans",
    "embed_dim",
    "window_size",
    "first_window_size",
    "patch_size",
    "depths",
    "num_heads",
    "c_multiplier",
    "last_layer_full_MSA",
)


def read_lightning_ckpt(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(backbone state dict from `model.*`, architecture hyper-parameters) of a SwiFT Lightning checkpoint; a plain
    state dict (with or without the `model.` prefix) is accepted too."""
    ckpt = torch_load(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict found")
    if any(k.startswith("model.") for k in state):
        state = strip_prefix(state, "model.")
    hp = (ckpt.get("hyper_parameters") or {}) if "state_dict" in ckpt else {}
    hp = vars(hp) if isinstance(hp, argparse.Namespace) else dict(hp)
    return state, {k: hp[k] for k in ARCH_KEYS if k in hp}


def save_lightning_ckpt(
    backbone: SwinTransformer4D,
    path: str | Path,
    hyper_parameters=None,  # dict, Lightning AttributeDict or argparse.Namespace, stored as given
    output_head: dict[str, Tensor] | None = None,
) -> None:
    """Write a checkpoint in SwiFT's Lightning layout (state_dict with model.* and output_head.*, hyper_parameters)."""
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"output_head.{k}": v for k, v in (output_head or {}).items()}
    torch.save(
        {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "1.9.4",
            "state_dict": state,
            "hyper_parameters": hyper_parameters if hyper_parameters is not None else {},
        },
        str(path),
    )


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, Sequence) and not isinstance(v, str) else v


class SwiFTEncoder(WindowAveragingEncoder):
    """(B, W, 1, X, Y, Z, T) normalised volume windows -> (B, C_last) mean over tokens and windows."""

    window_ndim = 5

    def __init__(
        self, checkpoint: str | Path | None = None, freeze: bool = False, chunk_size: int | None = None, **arch
    ):  # SwinTransformer4D arguments; a checkpoint's hyper_parameters override the ARCH_KEYS
        state = None
        if checkpoint is not None:
            state, hp = read_lightning_ckpt(checkpoint)
            for k, v in hp.items():
                if k in arch and _plain(arch[k]) != _plain(v):
                    log.warning(
                        "SwiFT %s: checkpoint has %s=%s, config says %s; using the checkpoint's",
                        checkpoint,
                        k,
                        v,
                        arch[k],
                    )
            arch |= hp
        backbone = SwinTransformer4D(**{k: _plain(v) for k, v in arch.items()})
        if state is not None:
            load_strict(backbone, state, f"SwiFT checkpoint {checkpoint}")
        super().__init__(backbone, backbone.num_features, freeze=freeze, chunk_size=chunk_size)

    def embed(self, x: Tensor) -> Tensor:  # (N, 1, X, Y, Z, T) -> (N, C_last)
        return self.backbone(x).flatten(2).mean(-1)
