"""BrainLM, "brainlm_mae" family: a masked autoencoder over (parcel x 20-TR patch) tokens with Nystromformer layers.

References: Ortega Caro et al. 2024, "BrainLM: A foundation model for brain activity recordings" (ICLR);
vandijklab/BrainLM `brainlm_mae/modeling_brainlm.py` (b591d88) for names and shapes; transformers' NystromformerLayer
(Xiong et al. 2021) is used as is, so the layer weights keep its key names.

    signal (B, P, T), xyz (B, P, 3)
    tokens  = signal_embedding_projection(patches of 20 TRs)      # (B, P, N=T/20, H)
            + xyz_embedding_projection(xyz)                       # broadcast over N
            + sinusoidal PE over the time-patch index n            # pe (5000, H) buffer, then dropout 0.1
    flatten (P, N) -> random masking (mask_ratio; 0 for embeddings) -> prepend CLS -> Nystromformer layers (post-LN;
    num_landmarks == segment_means_seq_len makes the attention exact softmax, conv_kernel_size adds a depthwise conv on
    V) -> layernorm. Embedding = CLS (token 0). That exact softmax runs in torch's fused scaled_dot_product_attention
    (ExactSoftmaxAttention: the same parameters and output, without the (B, heads, L, L) probabilities in memory).
State dict = upstream BrainLMForPretraining: vit.embeddings.*, vit.encoder.layer.{i}.*, vit.layernorm.*, decoder.*
(decoder optional here; it is only needed for masked reconstruction). Checkpoints: a Hugging Face folder with
config.json (model_type brainlm_mae) and pytorch_model.bin or model.safetensors. Weights licence: CC BY-NC-ND 4.0.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import NystromformerConfig
from transformers.models.nystromformer.modeling_nystromformer import NystromformerLayer, NystromformerSelfAttention

from brain.models.common import WindowAveragingEncoder
from brain.preprocess import read_atlas_coords
from genomics.checkpoints import load_strict, read_hf_weights, write_hf_weights


@dataclass
class BrainLMConfig:
    """Defaults = the repo checkpoint (pretrained_models/2023-06-06-22_15_00-checkpoint-1400/config.json)."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.1  # unused by the exact-softmax path (as upstream)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    decoder_hidden_size: int = 256
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 1024
    num_brain_voxels: int = 424  # P of the pretraining atlas (A424); the encoder works with any P
    num_timepoints_per_voxel: int = 200  # T of a window
    timepoint_patching_size: int = 20  # TRs per token
    mask_ratio: float = 0.2  # pretraining; embeddings use 0
    segment_means_seq_len: int = 64
    num_landmarks: int = 64
    conv_kernel_size: int | None = 65
    inv_coeff_init_option: bool = False
    use_tanh_decoder: bool = False
    patch_size: int = 16  # only sizes the vestigial decoder_pred inherited from ViTMAEDecoder
    num_channels: int = 3

    @classmethod
    def from_dict(cls, d: dict) -> BrainLMConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def nystromformer(self, decoder: bool = False) -> NystromformerConfig:
        if self.num_landmarks != self.segment_means_seq_len:
            raise ValueError(
                "num_landmarks must equal segment_means_seq_len (exact attention, as every BrainLM release)"
            )
        p = "decoder_" if decoder else ""
        return NystromformerConfig(
            hidden_size=getattr(self, p + "hidden_size"),
            num_hidden_layers=getattr(self, p + "num_hidden_layers"),
            num_attention_heads=getattr(self, p + "num_attention_heads"),
            intermediate_size=getattr(self, p + "intermediate_size"),
            hidden_act=self.hidden_act,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attention_probs_dropout_prob=self.attention_probs_dropout_prob,
            layer_norm_eps=self.layer_norm_eps,
            segment_means_seq_len=self.segment_means_seq_len,
            num_landmarks=self.num_landmarks,
            conv_kernel_size=self.conv_kernel_size,
            inv_coeff_init_option=self.inv_coeff_init_option,
        )


class PositionalEncoding(nn.Module):
    """Fixed sinusoidal encoding over the time-patch index (Vaswani et al. 2017), added over the parcel axis."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (H/2,)
        angle = torch.arange(max_len).unsqueeze(1) * inv_freq  # (max_len, H/2)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
        self.register_buffer("pe", pe)  # persistent: part of upstream's state dict

    def forward(self, x: Tensor) -> Tensor:  # (B, P, N, H)
        return self.dropout(x + self.pe[: x.shape[2]])


def random_masking(x: Tensor, mask_ratio: float, noise: Tensor | None = None):
    """MAE masking by sorting noise; (B, L, H) -> kept (B, L_keep, H), mask (B, L) 1 = removed, ids_restore (B, L)."""
    b, length, h = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(b, length, device=x.device) if noise is None else noise
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, h))
    mask = torch.ones(b, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


class BrainLMEmbeddings(nn.Module):
    def __init__(self, cfg: BrainLMConfig):
        super().__init__()
        self.cfg = cfg
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.signal_embedding_projection = nn.Linear(cfg.timepoint_patching_size, cfg.hidden_size)
        self.xyz_embedding_projection = nn.Linear(3, cfg.hidden_size)
        self.pos_embedding = PositionalEncoding(cfg.hidden_size)

    def forward(self, signal: Tensor, xyz: Tensor, mask_ratio: float = 0.0, noise: Tensor | None = None):
        b, p, t = signal.shape
        k = self.cfg.timepoint_patching_size
        if t % k:
            raise ValueError(f"window of {t} frames is not a multiple of the {k}-TR patch")
        x = self.signal_embedding_projection(signal.reshape(b, p, t // k, k))  # (B, P, N, H)
        x = x + self.xyz_embedding_projection(xyz).unsqueeze(2)  # (B, P, 1, H) over N
        x = self.pos_embedding(x).flatten(1, 2)  # (B, P*N, H)
        if mask_ratio > 0 or noise is not None:
            x, mask, ids_restore = random_masking(x, mask_ratio, noise)
        else:  # embeddings: every token, in order
            mask = x.new_zeros(b, x.shape[1])
            ids_restore = torch.arange(x.shape[1], device=x.device).expand(b, -1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1+L, H)
        return x, mask, ids_restore


class ExactSoftmaxAttention(NystromformerSelfAttention):
    """transformers' NystromformerSelfAttention whose exact branch (num_landmarks == segment_means_seq_len, BrainLM's
    setting: softmax(q k^T / sqrt(d)) v, no attention dropout, plus the depthwise conv on v) is computed by
    F.scaled_dot_product_attention. Same parameters and keys; the approximate branch is the parent's."""

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        if self.num_landmarks != self.seq_len or output_attentions:
            return super().forward(hidden_states, attention_mask, output_attentions)
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)  # q, k, v: (B, heads, L, d)
        q, k, v = (
            f(hidden_states).view(shape).transpose(1, 2) for f in (self.query, self.key, self.value)
        )  # (B,h,L,d)
        context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, h, L, d)
        if self.conv_kernel_size is not None:
            context = context + self.conv(v)
        return (context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size),)  # (B, L, H)


def nystromformer_layers(cfg: NystromformerConfig, n: int) -> nn.ModuleList:
    """n NystromformerLayers whose self-attention is ExactSoftmaxAttention (a subclass without new state)."""
    layers = nn.ModuleList([NystromformerLayer(cfg) for _ in range(n)])
    for layer in layers:
        layer.attention.self.__class__ = ExactSoftmaxAttention
    return layers


class BrainLMEncoderStack(nn.Module):
    def __init__(self, cfg: NystromformerConfig):
        super().__init__()
        self.layer = nystromformer_layers(cfg, cfg.num_hidden_layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x)[0]
        return x


class BrainLMModel(nn.Module):
    """Upstream `vit`: embeddings -> Nystromformer encoder -> layernorm."""

    def __init__(self, cfg: BrainLMConfig):
        super().__init__()
        self.embeddings = BrainLMEmbeddings(cfg)
        self.encoder = BrainLMEncoderStack(cfg.nystromformer())
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, signal: Tensor, xyz: Tensor, mask_ratio: float = 0.0, noise: Tensor | None = None):
        x, mask, ids_restore = self.embeddings(signal, xyz, mask_ratio, noise)
        return self.layernorm(self.encoder(x)), mask, ids_restore  # (B, 1+L_keep, H)


class BrainLMDecoder(nn.Module):
    """Upstream decoder (ViTMAEDecoder with Nystromformer layers, xyz + time encodings, 2-layer prediction head)."""

    def __init__(self, cfg: BrainLMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder_hidden_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_embed = nn.Linear(cfg.hidden_size, d)
        self.decoder_layers = nystromformer_layers(cfg.nystromformer(True), cfg.decoder_num_hidden_layers)
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.decoder_pred = nn.Linear(d, cfg.patch_size**2 * cfg.num_channels)  # inherited, unused (as upstream)
        self.decoder_xyz_projection = nn.Linear(3, cfg.hidden_size)  # upstream sizes these by the encoder width
        self.pos_embedding = PositionalEncoding(cfg.hidden_size)
        self.decoder_pred1 = nn.Linear(d, d // 2)
        self.decoder_pred2 = nn.Linear(d // 2, cfg.timepoint_patching_size)

    def forward(self, latent: Tensor, xyz: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1+L_keep, H) -> predicted patches (B, P, N, 20)."""
        x = self.decoder_embed(latent)  # (B, 1+L_keep, D)
        b, _, d = x.shape
        p, length = xyz.shape[1], ids_restore.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, length - x.shape[1] + 1, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, d)).view(b, p, length // p, d)
        tokens = self.pos_embedding(tokens + self.decoder_xyz_projection(xyz).unsqueeze(2)).flatten(1, 2)
        x = torch.cat([x[:, :1], tokens], dim=1)
        for layer in self.decoder_layers:
            x = layer(x)[0]
        x = self.decoder_pred2(nn.functional.leaky_relu(self.decoder_pred1(self.decoder_norm(x)), 0.1))
        if self.cfg.use_tanh_decoder:
            x = torch.tanh(x)
        return x[:, 1:].reshape(b, p, length // p, -1)


class BrainLMForPretraining(nn.Module):
    """The upstream-shaped network: `.vit` (+ `.decoder` when decoder=True)."""

    def __init__(self, cfg: BrainLMConfig, decoder: bool = True):
        super().__init__()
        self.config = cfg
        self.vit = BrainLMModel(cfg)
        self.decoder = BrainLMDecoder(cfg) if decoder else None
        self.apply(self._init_weights)
        nn.init.normal_(self.vit.embeddings.cls_token, std=cfg.initializer_range)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:  # upstream: xavier-uniform Linear, unit LayerNorm
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, signal: Tensor, xyz: Tensor, mask_ratio: float | None = None, noise: Tensor | None = None):
        """Masked reconstruction: returns (MSE on masked patches, predictions (B, P, N, 20), mask (B, P, N))."""
        if self.decoder is None:
            raise RuntimeError("built without the decoder (decoder=False); only .vit is available")
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.vit(signal, xyz, ratio, noise)
        pred = self.decoder(latent, xyz, ids_restore)  # (B, P, N, 20)
        target = signal.reshape(pred.shape)
        mask = mask.view(pred.shape[:-1])
        loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum().clamp(min=1)
        return loss, pred, mask

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """Hugging Face layout: config.json + model.safetensors (or pytorch_model.bin)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"architectures": ["BrainLMForPretraining"], "model_type": "brainlm_mae", **asdict(self.config)}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        write_hf_weights(self.state_dict(), folder, safe=safe_serialization)


def read_hf_folder(folder: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """(config.json as a dict, state dict) of a Hugging Face model folder; shards via *.index.json are merged."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return json.loads((folder / "config.json").read_text()), read_hf_weights(folder)


class BrainLMMAEEncoder(WindowAveragingEncoder):
    """(B, W, T, P) robust-scaled parcel windows -> (B, hidden) mean over windows of the CLS output (mask ratio 0)."""

    window_ndim = 2

    def __init__(
        self,
        coords: str | Path,  # cohort atlas coordinates table (label, x, y, z in MNI mm), same labels as the atlas
        checkpoint: str | Path | None = None,  # Hugging Face folder (config.json + weights); None = random init
        freeze: bool = False,
        decoder: bool = False,  # also build (and load) the pretraining decoder
        chunk_size: int | None = None,
        **config,  # BrainLMConfig fields (ignored for the architecture when a checkpoint is given)
    ):
        state = None
        if checkpoint is not None:
            hf_config, state = read_hf_folder(checkpoint)
            if hf_config.get("model_type", "brainlm_mae") != "brainlm_mae":
                raise ValueError(f"{checkpoint}: model_type {hf_config.get('model_type')!r} is not brainlm_mae")
            cfg = BrainLMConfig.from_dict(hf_config)
        else:
            cfg = BrainLMConfig(**config)
        backbone = BrainLMForPretraining(cfg, decoder=decoder)
        if state is not None:
            if not any(k.startswith("vit.") for k in state):
                state = {"vit." + k: v for k, v in state.items()}  # a bare BrainLMModel
            if not decoder:
                state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
            load_strict(backbone, state, f"BrainLM checkpoint {checkpoint}", optional=("pos_embedding.pe",))
        super().__init__(backbone, cfg.hidden_size, freeze=freeze, chunk_size=chunk_size)
        self.coords_path = str(coords)
        self.register_buffer("xyz", torch.from_numpy(read_atlas_coords(coords).xyz), persistent=False)  # (P, 3)

    def embed(self, x: Tensor) -> Tensor:  # (N, T, P) -> (N, H)
        n, t, p = x.shape
        if p != self.xyz.shape[0]:
            raise ValueError(f"input has {p} parcels but {self.coords_path} lists {self.xyz.shape[0]}")
        signal = x.transpose(1, 2)  # (N, P, T)
        latent, _, _ = self.backbone.vit(signal, self.xyz.expand(n, -1, -1))
        return latent[:, 0]  # CLS
