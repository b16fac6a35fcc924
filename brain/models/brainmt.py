"""BrainMT: hybrid Mamba + Transformer over whole-brain fMRI volumes, temporal-first tokens.

References: Kannan et al. 2025, "BrainMT: A Hybrid Mamba-Transformer Architecture for Modeling Long-Range
Dependencies in Functional MRI Data" (MICCAI); arunkumar-kannan/BrainMT-fMRI `src/brainmt/models/brain_mt.py`
(977e486) for names, shapes and block order; Gu & Dao 2023 (Mamba, via genomics.ssm.mamba.Mamba with mamba_ssm's
parameter names).

    x (B, T, 1, D, H, W)   upstream axis order: D, H, W = the NIfTI's Y, X, Z (109, 91, 91 for MNI 2 mm)
    per frame: patch_embed (Conv3d 1->64 k3 s2, ReLU, Conv3d 64->128 k3 s2, ReLU) -> conv_block0 (128) -> downsample0
               (Conv3d 128->256 k3 s2) -> conv_block1 (256) -> downsample1 (256->512)       # (B*T, 512, 7, 6, 6)
    tokens: frame tokens (B*T, 252, 512) + pos_embed[1:]; cls_token + pos_embed[0];
            + temporal_pos_embedding per frame; order (n t): temporal-first        # (B, 1 + 252*T, 512)
    Mamba stage: 12 x [residual += h; h = Mamba(RMSNorm(residual))], then norm_f(residual + h)   (unidirectional)
    Attention stage: 8 x [h += Attn_i(norm(h)); h += mlp(norm(h))] with ONE shared LayerNorm `norm` and ONE `mlp`
    embedding = CLS (h[:, 0]); `head` (512 -> num_classes) is kept for the key layout but not used by the encoder.
No released weights (upstream README: "Release Model checkpoints" unchecked). Checkpoints: torch.save dict with
`model_state_dict` (upstream train.py), or a bare state dict. Default config: 39,104,961 parameters, 184 keys.
Generalisations (documented, default behaviour unchanged): T may be shorter than num_frames (temporal_pos_embedding
is truncated), tokens per frame follow from img_size, and the stem runs over frames in chunks to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brain.models.common import WindowAveragingEncoder
from brain.models.layers import Attention, DropPath
from genomics.checkpoints import load_strict, strip_prefix, torch_load
from genomics.ssm.block import MambaBlock
from genomics.ssm.mamba import Mamba


def stem_grid(size: Sequence[int]) -> tuple[int, int, int]:
    """Token grid after the four stride-2, kernel-3, padding-1 convolutions: n -> ceil(n / 2), four times."""
    out = []
    for n in size:
        for _ in range(4):
            n = (n - 1) // 2 + 1
        out.append(n)
    return tuple(out)


class PatchEmbed(nn.Module):
    """Upstream's frame stem: Conv3d k3 s2 -> ReLU -> Conv3d k3 s2 -> ReLU (`proj` is an unused identity).

    Upstream's name, but not SwiFT's PatchEmbed (one Linear `fc` over flattened 4D patches): other network, other keys.
    """

    def __init__(self, in_chans: int = 1, in_dim: int = 64, dim: int = 128):
        super().__init__()
        self.proj = nn.Identity()
        self.conv_down = nn.Sequential(
            nn.Conv3d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.ReLU(),
            nn.Conv3d(in_dim, dim, 3, 2, 1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_down(self.proj(x))


class ConvBlock(nn.Module):
    """Residual conv -> LayerNorm (channels) -> GELU(tanh) -> conv -> LayerNorm."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv3d(dim, dim, 3, 1, 1)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.conv2 = nn.Conv3d(dim, dim, 3, 1, 1)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, D, H, W)
        y = self.norm1(self.conv1(x).movedim(1, -1)).movedim(-1, 1)
        y = self.norm2(self.conv2(F.gelu(y, approximate="tanh")).movedim(1, -1)).movedim(-1, 1)
        return x + y


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv3d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(x)


def mamba_block(dim: int, ssm_cfg: dict, eps: float, drop_path: float, layer_idx: int) -> MambaBlock:
    """Upstream `Block` (Vim's: drop path -> add -> RMSNorm -> Mamba, residual carried in fp32)."""
    mixer = partial(Mamba, layer_idx=layer_idx, **ssm_cfg)
    return MambaBlock(dim, mixer, partial(nn.RMSNorm, eps=eps), residual_in_fp32=True, drop_path=DropPath(drop_path))


class Mlp(nn.Module):
    """timm Mlp names: fc1 -> GELU -> dropout -> fc2 -> dropout (SwiFT's MLPBlock, with other key names)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class BrainMT(nn.Module):
    """(B, T, 1, D, H, W) -> CLS features (B, embed_dim) via forward_features; forward adds the upstream head."""

    def __init__(
        self,
        img_size: Sequence[int] = (109, 91, 91),  # (D, H, W) as the network sees a frame (NIfTI Y, X, Z)
        in_chans: int = 1,
        num_classes: int = 1,
        embed_dim: int = 512,  # must be 4 * stem_dim (two channel-doubling downsamples)
        depth: Sequence[int] = (12, 8),  # Mamba layers, attention blocks
        num_heads: int = 2,
        qkv_bias: bool = True,
        num_frames: int = 200,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        attn_drop_rate: float = 0.0,
        norm_epsilon: float = 1e-5,
        ssm_cfg: dict | None = None,  # Mamba kwargs (d_state, d_conv, expand, backend, ...)
        stem_in_dim: int = 64,
        stem_dim: int = 128,
        stem_chunk: int | None = 16,  # frames per stem pass (memory); None = all at once
    ):
        super().__init__()
        if embed_dim != 4 * stem_dim:
            raise ValueError(f"embed_dim ({embed_dim}) must be 4 * stem_dim ({stem_dim})")
        self.embed_dim, self.num_frames, self.stem_chunk = embed_dim, num_frames, stem_chunk
        self.img_size = tuple(img_size)
        self.grid = stem_grid(img_size)  # (7, 6, 6) for (109, 91, 91)
        num_patches = math.prod(self.grid)
        self.norm = nn.LayerNorm(embed_dim)  # shared by every attention block
        self.patch_embed = PatchEmbed(in_chans, stem_in_dim, stem_dim)
        self.conv_block0, self.downsample0 = ConvBlock(stem_dim), Downsample(stem_dim)
        self.conv_block1, self.downsample1 = ConvBlock(2 * stem_dim), Downsample(2 * stem_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        dpr = torch.linspace(0, drop_path_rate, sum(depth), device="cpu").tolist()
        inter_dpr = [0.0] + dpr
        self.drop_path = DropPath(drop_path_rate)
        self.layers = nn.ModuleList(
            [mamba_block(embed_dim, dict(ssm_cfg or {}), norm_epsilon, inter_dpr[i], i) for i in range(depth[0])]
        )
        self.drop_path_attn = nn.ModuleList([DropPath(dpr[i]) for i in range(depth[0], sum(depth))])
        self.blocks = nn.ModuleList(
            [Attention(embed_dim, num_heads, qkv_bias, attn_drop_rate, drop_rate) for _ in range(depth[1])]
        )
        self.mlp = Mlp(embed_dim, 2 * embed_dim, drop_rate)
        self.norm_f = nn.RMSNorm(embed_dim, eps=norm_epsilon)
        self._init_weights(sum(depth))

    @torch.no_grad()
    def _init_weights(self, n_layer: int) -> None:
        """Upstream: trunc-normal(0.02) Linear weights and zero biases everywhere (Mamba's included), unit LayerNorms,
        trunc-normal pos_embed, then out_proj / fc2 re-drawn (kaiming-uniform) and scaled by 1/sqrt(n_layer)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in [layer.mixer.out_proj for layer in self.layers] + [self.mlp.fc2]:
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5))
            m.weight /= math.sqrt(n_layer)

    def stem(self, x: Tensor) -> Tensor:  # (N, 1, D, H, W) -> (N, 512, d, h, w)
        x = self.downsample0(self.conv_block0(self.patch_embed(x)))
        return self.downsample1(self.conv_block1(x))

    def forward_features(self, x: Tensor) -> Tensor:
        b, t = x.shape[:2]
        if tuple(x.shape[3:]) != self.img_size:
            raise ValueError(f"BrainMT expects frames of {self.img_size} (D, H, W), got {tuple(x.shape[3:])}")
        if t > self.num_frames:
            raise ValueError(f"{t} frames exceed num_frames={self.num_frames}")
        frames = x.reshape(b * t, *x.shape[2:])  # (B*T, 1, D, H, W)
        chunk = self.stem_chunk or frames.shape[0]
        feats = torch.cat([self.stem(f) for f in frames.split(chunk)])  # (B*T, C, d, h, w)
        tokens = feats.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]  # (B*T, n, C)
        n = tokens.shape[1]
        tokens = tokens.view(b, t, n, -1) + self.temporal_pos_embedding[:, :t, None]  # (B, T, n, C)
        tokens = tokens.transpose(1, 2).reshape(b, n * t, -1)  # (B, n*T, C): temporal-first
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        h = self.pos_drop(torch.cat([cls, tokens], dim=1))  # (B, 1 + n*T, C)
        residual = None
        for layer in self.layers:
            h, residual = layer(h, residual)
        h = self.norm_f((residual + self.drop_path(h).float()).to(self.norm_f.weight.dtype))
        for drop_path, block in zip(self.drop_path_attn, self.blocks):
            h = h + drop_path(block(self.norm(h)))
            h = h + drop_path(self.mlp(self.norm(h)))
        return h[:, 0]  # (B, C) CLS

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def read_torch_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """State dict from upstream's torch.save({'model_state_dict': ..., ...}) or a bare state dict; strips `module.`."""
    ckpt = torch_load(path)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict or a dict with 'model_state_dict'")
    return strip_prefix(state, "module.") if all(k.startswith("module.") for k in state) else state


class BrainMTEncoder(WindowAveragingEncoder):
    """(B, W, T, 1, D, H, W) normalised volume windows -> (B, embed_dim) mean over windows of the CLS output."""

    window_ndim = 5

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        freeze: bool = False,
        chunk_size: int | None = None,
        backend: str = "auto",
        **arch,
    ):  # BrainMT arguments; backend = the Mamba kernel (genomics.ssm.ops)
        arch = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in arch.items()}
        arch["ssm_cfg"] = {"backend": backend, **dict(arch.get("ssm_cfg") or {})}
        backbone = BrainMT(**arch)
        if checkpoint is not None:
            load_strict(backbone, read_torch_checkpoint(checkpoint), f"BrainMT checkpoint {checkpoint}")
        super().__init__(backbone, backbone.embed_dim, freeze=freeze, chunk_size=chunk_size)

    def embed(self, x: Tensor) -> Tensor:  # (N, T, 1, D, H, W) -> (N, C)
        return self.backbone.forward_features(x)
