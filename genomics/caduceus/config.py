"""CaduceusConfig: the Hugging Face config of the published Caduceus checkpoints (model_type "caduceus").

References: Schiff et al. 2024, "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling";
kuleshov-group/caduceus `caduceus/configuration_caduceus.py` (field names) and the published config.json files.

Reads the published config.json as is (complement_map with string keys "0".."15", ssm_cfg with `use_fast_path`,
`auto_map` ignored). Defaults are those of the published caduceus-ph 131k model, not upstream's Mamba-LM defaults.
The vocabulary is padded to a multiple of `pad_vocab_size_multiple` here (upstream did it in the model constructor),
and the complement map is extended with identities over the padding, so `config.vocab_size` is the embedding size.
"""

from __future__ import annotations

import copy

from transformers import PretrainedConfig

from genomics.alphabet import COMPLEMENT_MAP, VOCAB_SIZE

# ssm_cfg of every published checkpoint (kwargs of genomics.ssm.mamba.Mamba)
PUBLISHED_SSM_CFG = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
    "use_fast_path": True,
}
PUBLISHED_INITIALIZER_CFG = {"initializer_range": 0.02, "rescale_prenorm_residual": True, "n_residuals_per_layer": 1}

# the published checkpoints (kuleshov-group/<name> on the Hugging Face hub); architecture = config.json of each
PUBLISHED = {
    "caduceus-ps_seqlen-131k_d_model-256_n_layer-16": dict(d_model=256, n_layer=16, rcps=True),
    "caduceus-ph_seqlen-131k_d_model-256_n_layer-16": dict(d_model=256, n_layer=16, rcps=False),
    "caduceus-ps_seqlen-1k_d_model-256_n_layer-4_lr-8e-3": dict(d_model=256, n_layer=4, rcps=True),
    "caduceus-ph_seqlen-1k_d_model-118_n_layer-4_lr-8e-3": dict(d_model=118, n_layer=4, rcps=False),
}


class CaduceusConfig(PretrainedConfig):
    model_type = "caduceus"

    def __init__(
        self,
        d_model: int = 256,  # D, width of each strand's hidden stream (RCPS streams are 2D wide)
        n_layer: int = 16,  # number of (BiMamba + norm) blocks
        vocab_size: int = VOCAB_SIZE,  # 12 ids; padded below to a multiple of pad_vocab_size_multiple (16)
        ssm_cfg: dict | None = None,  # Mamba mixer kwargs (d_state N, d_conv, expand E, dt_rank R, dt init, biases)
        rms_norm: bool = True,  # RMSNorm (True) or LayerNorm
        residual_in_fp32: bool = False,  # keep the residual stream in float32
        fused_add_norm: bool = True,  # published PS checkpoints: the fused add-norm's half swap (see blocks.py)
        pad_vocab_size_multiple: int = 8,
        norm_epsilon: float = 1e-5,
        initializer_cfg: dict | None = None,  # initializer_range, rescale_prenorm_residual, n_residuals_per_layer
        bidirectional: bool = True,  # BiMamba: a forward and a reversed Mamba per block
        bidirectional_strategy: str | None = "add",  # "add" | "ew_multiply": how the two directions combine
        bidirectional_weight_tie: bool = True,  # share in_proj and out_proj between the two directions
        rcps: bool = False,  # reverse-complement parameter sharing (Caduceus-PS); False = Caduceus-Ph
        complement_map: dict | None = None,  # token id -> complement id; default genomics.alphabet.COMPLEMENT_MAP
        ssm_backend: str = "auto",  # genobrain only: "auto" | "torch" | "cpu" | "cuda" | "triton" (genomics.ssm.ops)
        **kwargs,
    ):
        kwargs.pop("auto_map", None)  # the published files point at remote code; we never execute it
        if bidirectional and bidirectional_strategy is None:
            bidirectional_strategy = "add"
        if bidirectional and bidirectional_strategy not in ("add", "ew_multiply"):
            raise ValueError(f"bidirectional_strategy must be 'add' or 'ew_multiply', got {bidirectional_strategy!r}")
        if vocab_size % pad_vocab_size_multiple:
            vocab_size += pad_vocab_size_multiple - vocab_size % pad_vocab_size_multiple
        cmap = {int(k): int(v) for k, v in (complement_map if complement_map is not None else COMPLEMENT_MAP).items()}
        cmap |= {i: i for i in range(vocab_size) if i not in cmap}
        if sorted(cmap) != list(range(vocab_size)) or any(cmap[cmap[i]] != i for i in cmap):
            raise ValueError(f"complement_map must be an involution over ids 0..{vocab_size - 1}, got {cmap}")
        self.d_model = d_model
        self.n_layer = n_layer
        self.vocab_size = vocab_size
        self.ssm_cfg = copy.deepcopy(ssm_cfg) if ssm_cfg is not None else dict(PUBLISHED_SSM_CFG)
        self.rms_norm = rms_norm
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.norm_epsilon = norm_epsilon
        self.initializer_cfg = (
            copy.deepcopy(initializer_cfg) if initializer_cfg is not None else dict(PUBLISHED_INITIALIZER_CFG)
        )
        self.bidirectional = bidirectional
        self.bidirectional_strategy = bidirectional_strategy
        self.bidirectional_weight_tie = bidirectional_weight_tie
        self.rcps = rcps
        self.complement_map = cmap
        self.ssm_backend = ssm_backend
        super().__init__(**kwargs)

    @classmethod
    def published(cls, name: str, **overrides) -> CaduceusConfig:
        """The config of a published checkpoint by name (see PUBLISHED), e.g. for building it without the files."""
        if name not in PUBLISHED:
            raise KeyError(f"unknown published Caduceus {name!r}; known: {sorted(PUBLISHED)}")
        return cls(**(PUBLISHED[name] | overrides))
