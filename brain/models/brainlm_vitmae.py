"""BrainLM, ViT-MAE family ("vitmae_111M", "vitmae_650M"): a parcel x time window as an image for ViT-MAE.

References: Ortega Caro et al. 2024 (BrainLM); He et al. 2022 (MAE); vandijklab/BrainLM `brainlm_tutorial.ipynb` and
`brainlm_mae/vit_image_finetuning_mlp_pred_head.py` (b591d88) for the image recipe; transformers' ViTMAEModel.

    window (T, P) -> (P, T) -> parcels reordered by ascending Y coordinate -> / 5.6430855 -> 3 identical channels
    -> constant -1 padding, half on each side, to the square image (432 for patch 16, 434 for patch 14)
    -> ViTMAEModel with mask_ratio 0 and the identity token order -> CLS output of the last layernorm.
Weights: Hugging Face folders (config.json + model.safetensors / pytorch_model.bin) saved with transformers 4.x, whose
key names (`vit.encoder.layer.{i}.attention.attention.query`, `intermediate.dense`, `output.dense`) transformers 5
renamed (`vit.layers.{i}.attention.q_proj`, `mlp.fc1`, `mlp.fc2`); loading accepts either and maps to the installed
version. `.backbone` holds `vit` (and `decoder` when asked), i.e. ViTMAEForPreTraining's names.
Licence of the weights: CC BY-NC-ND 4.0.
Sizes: 111M = ViT-B (768, 12 layers, 12 heads, patch 16, image 432; 112,590,080 parameters with the decoder, encoder
86,208,000); 650M = ViT-H (1280, 32 layers, 16 heads, patch 14, image 434) [inferred, not checked against weights].
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel

from brain.models.brainlm_mae import read_hf_folder
from brain.models.common import WindowAveragingEncoder
from brain.preprocess import read_atlas_coords
from genomics.checkpoints import load_strict, write_hf_weights

MAX_VAL_TO_SCALE = 5.6430855  # upstream's divisor of the robust-scaled signal

PRESETS = {
    "111m": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        patch_size=16,
        image_size=432,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
    ),
    "650m": dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        intermediate_size=5120,
        patch_size=14,
        image_size=434,
        decoder_hidden_size=512,
        decoder_num_hidden_layers=8,
        decoder_num_attention_heads=16,
        decoder_intermediate_size=2048,
    ),
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=16,
        image_size=None,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    ),
}

# transformers 4.x -> 5.x ViT-MAE layer names (applied in order)
_V4_TO_V5 = [
    (r"^vit\.encoder\.layer\.", "vit.layers."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
]
_V5_TO_V4 = [
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def _rename(state: dict[str, Tensor], rules) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def to_installed_names(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a ViT-MAE state dict saved by transformers 4.x or 5.x to the key names of the installed version."""
    installed_v5 = any(".layers." in k for k in model.state_dict())
    given_v4 = any(".encoder.layer." in k or ".attention.attention." in k for k in state)
    if installed_v5 and given_v4:
        return _rename(state, _V4_TO_V5)
    if not installed_v5 and not given_v4:
        return _rename(state, _V5_TO_V4)
    return dict(state)


def to_transformers4_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The published (transformers 4.x) layout, whatever version produced `state`."""
    if any(".encoder.layer." in k or ".attention.attention." in k for k in state):
        return dict(state)
    return _rename(state, _V5_TO_V4)


class _VitOnly(nn.Module):
    """Holds ViTMAEModel under `vit` so the keys match ViTMAEForPreTraining's without its decoder."""

    def __init__(self, config: ViTMAEConfig):
        super().__init__()
        self.config = config
        self.vit = ViTMAEModel(config)


def build_backbone(config: ViTMAEConfig, decoder: bool) -> nn.Module:
    return ViTMAEForPreTraining(config) if decoder else _VitOnly(config)


def save_pretrained(
    backbone: nn.Module, folder: str | Path, transformers4_names: bool = True, safe: bool = True
) -> None:
    """Write a Hugging Face folder as published (config.json + weights, transformers 4.x key names by default)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = backbone.config.to_dict()
    cfg["architectures"] = ["ViTMAEForPreTraining"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    state = backbone.state_dict()
    write_hf_weights(to_transformers4_names(state) if transformers4_names else state, folder, safe=safe)


class BrainLMViTMAEEncoder(WindowAveragingEncoder):
    """(B, W, T, P) robust-scaled parcel windows -> (B, hidden) mean over windows of the ViT-MAE CLS output."""

    window_ndim = 2

    def __init__(
        self,
        coords: str | Path,  # atlas coordinates table; its Y column orders the image rows
        size: str = "111m",  # preset for random init: 111m | 650m | tiny
        checkpoint: str | Path | None = None,  # Hugging Face folder; its config.json decides the architecture
        freeze: bool = False,
        decoder: bool = False,  # also build (and load) the MAE decoder
        num_timepoints: int = 200,  # T of a window (sizes the image when image_size is None)
        scale: float = MAX_VAL_TO_SCALE,
        pad_value: float = -1.0,
        chunk_size: int | None = None,
        **overrides,  # ViTMAEConfig fields on top of the preset (random init only)
    ):
        table = read_atlas_coords(coords)
        n_parcels = len(table.labels)
        state = None
        if checkpoint is not None:
            hf_config, state = read_hf_folder(checkpoint)
            config = ViTMAEConfig(**{k: v for k, v in hf_config.items() if k not in ("architectures", "model_type")})
        else:
            if size not in PRESETS:
                raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
            kwargs = {**PRESETS[size], **overrides}
            if kwargs.get("image_size") is None:  # smallest square holding P rows and T columns
                p = kwargs["patch_size"]
                kwargs["image_size"] = -(-max(n_parcels, num_timepoints) // p) * p
            config = ViTMAEConfig(**kwargs)
        config.mask_ratio = 0.0  # embeddings: every patch
        backbone = build_backbone(config, decoder)
        if state is not None:
            state = to_installed_names(state, backbone)
            if not decoder:
                state = {k: v for k, v in state.items() if not k.startswith("decoder.")}
            load_strict(backbone, state, f"BrainLM ViT-MAE checkpoint {checkpoint}")
        super().__init__(backbone, config.hidden_size, freeze=freeze, chunk_size=chunk_size)
        image = config.image_size
        self.image_size = tuple(image) if isinstance(image, (list, tuple)) else (image, image)
        self.scale, self.pad_value, self.coords_path = float(scale), float(pad_value), str(coords)
        order = np.argsort(table.xyz[:, 1], kind="stable")  # ascending Y (posterior -> anterior)
        self.register_buffer("y_order", torch.from_numpy(order), persistent=False)  # (P,)

    def image(self, x: Tensor) -> Tensor:
        """(N, T, P) -> (N, 3, H, W) padded image, as upstream."""
        n, t, p = x.shape
        if p != self.y_order.shape[0]:
            raise ValueError(f"input has {p} parcels but {self.coords_path} lists {self.y_order.shape[0]}")
        h, w = self.image_size
        if p > h or t > w:
            raise ValueError(f"a {p} x {t} (parcels x frames) window does not fit the {h} x {w} image")
        img = x.transpose(1, 2)[:, self.y_order] / self.scale  # (N, P, T)
        img = img.unsqueeze(1).expand(-1, 3, -1, -1)  # (N, 3, P, T)
        top, left = (h - p) // 2, (w - t) // 2
        return nn.functional.pad(img, (left, w - t - left, top, h - p - top), value=self.pad_value)  # (N, 3, H, W)

    def embed(self, x: Tensor) -> Tensor:  # (N, T, P) -> (N, hidden)
        pixels = self.image(x)
        n = pixels.shape[0]
        p = self.backbone.config.patch_size
        length = (self.image_size[0] // p) * (self.image_size[1] // p)
        noise = torch.arange(length, device=x.device, dtype=torch.float32).expand(n, -1)  # identity order
        out = self.backbone.vit(pixel_values=pixels, noise=noise)
        return out.last_hidden_state[:, 0]  # CLS
