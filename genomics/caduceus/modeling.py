"""Caduceus as Hugging Face PreTrainedModels: backbone, masked LM and sequence classification.

References: Schiff et al. 2024, "Caduceus: Bi-Directional Equivariant Long-Range DNA Sequence Modeling" (ICML);
kuleshov-group/caduceus `caduceus/modeling_caduceus.py` (class, module and parameter names, init, heads).

    ids (B, L) -> embeddings (B, L, D) | RCPS (B, L, 2D)
               -> n_layer x block: residual += hidden; hidden = BiMamba(norm(residual))
               -> norm_f(hidden + residual) -> last_hidden_state (B, L, D | 2D)
    CaduceusForMaskedLM: lm_head tied to the embedding table -> logits (B, L, V)
No attention mask: pads are processed as tokens, as in the published models. Differences from upstream: pure-PyTorch
norms and mixer (mamba-ssm kernels used automatically on CUDA when installed), gradient checkpointing, and
from_pretrained / save_pretrained that read and write only local folders in the published layout (loading.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithNoAttention, MaskedLMOutput, SequenceClassifierOutput

from genomics.caduceus import loading
from genomics.caduceus.bimamba import BiMambaWrapper
from genomics.caduceus.blocks import RCPSMambaBlock, RMSNorm, create_block, norm_class
from genomics.caduceus.config import CaduceusConfig
from genomics.caduceus.rcps import RCPSAddNormWrapper, RCPSEmbedding, RCPSLMHead, rcps_add_norm, stack_strands
from genomics.caduceus.tokenizer import reverse_complement_ids
from genomics.ssm import ops
from genomics.ssm.block import MambaBlock
from genomics.ssm.mamba import Mamba


def _norm_kind(norm: nn.Module) -> str | None:
    """The norm kind the fused kernel implements ("rms" or "layer"), else None."""
    if isinstance(norm, RMSNorm):
        return "rms"
    if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and len(norm.normalized_shape) == 1:
        return "layer"
    return None


def _add_norm(run, H: Tensor, R: Tensor, has_res: bool, s_add: int, sel: int, norm: nn.Module, rcps: bool) -> None:
    """In place: R += swap^s_add(H) (or R = H); H = norm of R's halves, the RC half with flipped weights."""
    w = norm.weight.detach()
    b = None if getattr(norm, "bias", None) is None else norm.bias.detach()
    if rcps:  # rc(norm(rc(x))) = x normed with flip_C(weight) (and bias): the statistics do not see the order
        w = torch.stack([w, w.flip(0)])
        b = None if b is None else torch.stack([b, b.flip(0)])
    else:
        w, b = w[None], None if b is None else b[None]
    run(H, R, has_res, s_add, sel, w, b, norm.eps, _norm_kind(norm) == "rms")


class CaduceusEmbeddings(nn.Module):
    def __init__(self, config: CaduceusConfig):
        super().__init__()
        if config.rcps:
            self.word_embeddings = RCPSEmbedding(config.vocab_size, config.d_model, config.complement_map)
        else:
            self.word_embeddings = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)  # (B, L, D) or RCPS (B, L, 2D)


class CaduceusMixerModel(nn.Module):
    """Embeddings, blocks and final norm; (B, L) ids -> (B, L, D), or (B, L, 2D) with RCPS."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.rcps, self.residual_in_fp32 = config.rcps, config.residual_in_fp32
        self.embeddings = CaduceusEmbeddings(config)
        self.layers = nn.ModuleList([create_block(config) for _ in range(config.n_layer)])
        norm_f = norm_class(config)(config.d_model)
        self.norm_f = RCPSAddNormWrapper(norm_f) if config.rcps and not config.fused_add_norm else norm_f
        self.gradient_checkpointing = False  # set by PreTrainedModel.gradient_checkpointing_enable()

    def _final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        norm = self.norm_f.submodule if isinstance(self.norm_f, RCPSAddNormWrapper) else self.norm_f
        if self.rcps:  # each half normed in its own strand order; no half swap here, fused or not
            return rcps_add_norm(norm, hidden, residual, self.residual_in_fp32)[0]  # (B, L, 2D)
        residual = hidden + residual  # (B, L, D)
        return norm(residual.to(norm.weight.dtype))  # (B, L, D)

    def forward(self, input_ids=None, inputs_embeds=None, output_hidden_states=False) -> tuple[Tensor, list]:
        if not output_hidden_states and self._can_fuse(inputs_embeds):
            return self._fused_forward(input_ids, inputs_embeds), []
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, D | 2D)
        residual, all_hidden = None, []
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            if checkpointing:
                hidden, residual = self._checkpoint(layer, hidden, residual)  # activations recomputed in backward
            else:
                hidden, residual = layer(hidden, residual)  # (B, L, D | 2D) each
        hidden = self._final_norm(hidden, residual)  # (B, L, D | 2D)
        if output_hidden_states:
            all_hidden.append(hidden)
        return hidden, all_hidden

    # ------------------------------------------------------------------------------ fused inference (CPU kernel)
    # The same computation as the layer loop above, for inference on the CPU kernel, on two (B, L, D | 2D) buffers
    # owned here: H (hidden, then the normed stream, then the mixer output, in place) and R (the residual).
    # Per block: one kernel adds the residual and norms (RCPS: the half swap and the RC half's flips folded into
    # indexing and flipped norm weights), then one BiMamba call per strand writes into its half of H
    # (BiMambaWrapper.forward_into). The fused add-norm's half swap alternates the residual's physical orientation:
    # `swapped` records whether R holds swap_halves(residual).

    fused_inference = True  # set False to run the module-by-module composition (used by tests and benchmarks)
    fused_combine_out_proj = True  # one out_proj of the summed directions (False: one per direction, less memory)

    def _can_fuse(self, inputs_embeds) -> bool:
        if not self.fused_inference:
            return False
        embeds_grad = inputs_embeds is not None and inputs_embeds.requires_grad
        if torch.is_grad_enabled() and (embeds_grad or any(p.requires_grad for p in self.parameters())):
            return False
        norm_f = self.norm_f.submodule if isinstance(self.norm_f, RCPSAddNormWrapper) else self.norm_f
        if _norm_kind(norm_f) is None or norm_f.weight.device.type != "cpu":
            return False
        dtype = norm_f.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float64):
            return False
        if self.residual_in_fp32 and dtype != torch.float32:  # the norm's input rounding is not in the kernel
            return False
        for layer in self.layers:
            if isinstance(layer, RCPSMambaBlock):
                norm = layer.norm if layer.fused_add_norm else layer.norm.submodule
                mixer = layer.mixer.submodule
            elif isinstance(layer, MambaBlock) and layer.drop_path is None and not self.rcps:
                norm, mixer = layer.norm, layer.mixer
            else:
                return False
            if _norm_kind(norm) is None or not isinstance(mixer, BiMambaWrapper) or not mixer.fused_inference_ok():
                return False
        return True

    @torch.no_grad()
    def _fused_forward(self, input_ids, inputs_embeds) -> Tensor:
        from genomics.ssm._cpu_launch import run_add_norm

        norm_f = self.norm_f.submodule if isinstance(self.norm_f, RCPSAddNormWrapper) else self.norm_f
        if inputs_embeds is None:
            H = self.embeddings(input_ids).to(norm_f.weight.dtype).contiguous()  # (B, L, D | 2D), a fresh tensor
        else:
            H = inputs_embeds.to(norm_f.weight.dtype).clone(memory_format=torch.contiguous_format)  # ours to overwrite
        R = torch.empty_like(H, dtype=torch.float32 if self.residual_in_fp32 else H.dtype)
        d = H.shape[-1] // 2
        workspace, combine = {}, self.fused_combine_out_proj  # work buffers shared by all layers
        swapped = 0  # R holds swap_halves(residual) when 1 (RCPS with the fused add-norm)
        for i, layer in enumerate(self.layers):
            if self.rcps:
                fused = layer.fused_add_norm
                norm = layer.norm if fused else layer.norm.submodule
                sel = 1 - swapped if fused else swapped  # which half of R is the forward strand's input
                _add_norm(run_add_norm, H, R, i > 0, swapped, sel, norm, rcps=True)
                swapped = sel
                mixer = layer.mixer.submodule
                mixer.forward_into(H[..., :d], H[..., :d], combine=combine, workspace=workspace)
                mixer.forward_into(H[..., d:], H[..., d:], rc=True, combine=combine, workspace=workspace)
            else:
                _add_norm(run_add_norm, H, R, i > 0, 0, 0, layer.norm, rcps=False)
                layer.mixer.forward_into(H, H, combine=combine, workspace=workspace)
        _add_norm(run_add_norm, H, R, len(self.layers) > 0, swapped, swapped, norm_f, rcps=self.rcps)  # no swap
        return H  # (B, L, D | 2D)

    def _checkpoint(self, layer, hidden, residual):
        func = getattr(self, "_gradient_checkpointing_func", None)
        if func is None:
            return torch.utils.checkpoint.checkpoint(layer, hidden, residual, use_reentrant=False)
        return func(layer.__call__, hidden, residual)


class CaduceusPreTrainedModel(PreTrainedModel):
    """Shared init, weight tying and local-folder loading of the Caduceus models."""

    config_class = CaduceusConfig
    base_model_prefix = "caduceus"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BiMambaWrapper"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Upstream init: zero Linear biases (except dt_proj's), N(0, 0.02) embeddings, out_proj rescaled by
        1/sqrt(n_residuals_per_layer * n_layer) after a fresh kaiming-uniform draw (GPT-2 scheme)."""
        cfg = self.config.initializer_cfg or {}
        if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", 0):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=cfg.get("initializer_range", 0.02))
        if cfg.get("rescale_prenorm_residual", True) and isinstance(module, Mamba):
            nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            module.out_proj.weight /= math.sqrt(cfg.get("n_residuals_per_layer", 1) * self.config.n_layer)

    def tie_weights(self, *args, **kwargs) -> None:
        """Tie mamba_rev's in/out projections to mamba_fwd's in every block (and the LM head in subclasses)."""
        for module in self.modules():
            if isinstance(module, BiMambaWrapper):
                module.tie_weights()

    def set_ssm_backend(self, backend: str) -> None:
        """Force the selective-scan backend of every mixer: one of genomics.ssm.ops.BACKENDS."""
        if backend not in ops.BACKENDS:
            raise ValueError(f"unknown SSM backend {backend!r}; choose one of {ops.BACKENDS}")
        for module in self.modules():
            if isinstance(module, Mamba):
                module.backend = backend
        self.config.ssm_backend = backend

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load from a local folder in the published layout (config.json + model.safetensors | pytorch_model.bin,
        with or without the `caduceus.` prefix, tied aliases optional). No hub, no remote code; see loading.py."""
        return loading.load_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write config.json + model.safetensors in the published layout (tied aliases omitted)."""
        loading.save_pretrained(self, save_directory)


class Caduceus(CaduceusPreTrainedModel):
    """The backbone (AutoModel of the published checkpoints): ids (B, L) -> last_hidden_state (B, L, D | 2D)."""

    def __init__(self, config: CaduceusConfig, **kwargs):
        super().__init__(config)
        self.backbone = CaduceusMixerModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.embeddings.word_embeddings

    def forward(self, input_ids=None, inputs_embeds=None, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        hidden, all_hidden = self.backbone(input_ids, inputs_embeds, output_hidden_states)
        if return_dict:
            return BaseModelOutputWithNoAttention(
                last_hidden_state=hidden, hidden_states=all_hidden if output_hidden_states else None
            )
        return (hidden, all_hidden) if output_hidden_states else (hidden,)


class CaduceusForMaskedLM(CaduceusPreTrainedModel):
    """Backbone + LM head tied to the embedding table; labels use -100 for positions without loss."""

    def __init__(self, config: CaduceusConfig, **kwargs):
        super().__init__(config)
        self.caduceus = Caduceus(config)
        if config.rcps:
            self.lm_head = RCPSLMHead(config.d_model, config.vocab_size, config.complement_map)
        else:
            self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.caduceus.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def tie_weights(self, *args, **kwargs) -> None:
        super().tie_weights()
        head = self.lm_head.lm_head if self.config.rcps else self.lm_head
        head.weight = self.get_input_embeddings().weight  # (V, D), shared

    def forward(self, input_ids=None, inputs_embeds=None, labels=None, output_hidden_states=None, return_dict=None):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.caduceus(input_ids, inputs_embeds, output_hidden_states, return_dict=True)
        logits = self.lm_head(out.last_hidden_state).float()  # (B, L, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        if not return_dict:
            rest = (logits, out.hidden_states) if output_hidden_states else (logits,)
            return rest if loss is None else (loss, *rest)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


class CaduceusForSequenceClassification(CaduceusPreTrainedModel):
    """Backbone + pooled linear `score` (num_labels, D). RCPS: the two strands are pooled and scored separately and the
    logits averaged; Ph with conjoin: the same with a second pass on the reverse complement (computed from the ids
    when they are (B, L), or given as input_ids[..., 1] like upstream's (B, L, 2))."""

    def __init__(self, config, pooling_strategy="mean", conjoin_train=False, conjoin_eval=False, **kwargs):
        super().__init__(config)
        if pooling_strategy not in ("mean", "max", "first", "last"):
            raise ValueError(f"pooling_strategy must be mean | max | first | last, got {pooling_strategy!r}")
        self.pooling_strategy, self.conjoin_train, self.conjoin_eval = pooling_strategy, conjoin_train, conjoin_eval
        self.num_labels = kwargs.get("num_labels", config.num_labels)
        self.caduceus = Caduceus(config)
        self.score = nn.Linear(config.d_model, self.num_labels, bias=False)
        self.post_init()
        nn.init.normal_(self.score.weight, std=(config.initializer_cfg or {}).get("initializer_range", 0.02))

    def get_input_embeddings(self) -> nn.Module:
        return self.caduceus.get_input_embeddings()

    def pool(self, hidden: Tensor) -> Tensor:
        """Upstream pooling over the length axis (dim 1), pads included: (B, L, ...) -> (B, ...)."""
        if self.pooling_strategy == "mean":
            return hidden.mean(1)
        if self.pooling_strategy == "max":
            return hidden.max(1).values
        return hidden[:, 0] if self.pooling_strategy == "first" else hidden[:, -1]

    def strands(self, input_ids: Tensor, output_hidden_states=None):
        """Hidden states (B, L, D), or (B, L, D, 2) with the RC strand in RC order (RCPS, or Ph conjoined)."""
        conjoin = self.conjoin_train if self.training else self.conjoin_eval
        if self.config.rcps:
            out = self.caduceus(input_ids, output_hidden_states=output_hidden_states, return_dict=True)
            return stack_strands(out.last_hidden_state), out  # (B, L, 2D) -> (B, L, D, 2)
        if conjoin:
            fwd, rc = (input_ids[..., 0], input_ids[..., 1]) if input_ids.ndim == 3 else (input_ids, None)
            rc = reverse_complement_ids(fwd, self.config.complement_map) if rc is None else rc
            out = self.caduceus(fwd, output_hidden_states=output_hidden_states, return_dict=True)
            out_rc = self.caduceus(rc, return_dict=True)
            return torch.stack([out.last_hidden_state, out_rc.last_hidden_state], dim=-1), out  # (B, L, D, 2)
        out = self.caduceus(input_ids, output_hidden_states=output_hidden_states, return_dict=True)
        return out.last_hidden_state, out  # (B, L, D)

    def forward(self, input_ids=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        hidden, out = self.strands(input_ids, output_hidden_states)
        pooled = self.pool(hidden)  # (B, D) or (B, D, 2)
        logits = self.score(pooled) if pooled.ndim == 2 else self.score(pooled.transpose(1, 2)).mean(1)  # (B, C)
        loss = None
        if labels is not None:
            loss = _classification_loss(self.config, logits, labels.to(logits.device), self.num_labels)
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def _classification_loss(config, logits: Tensor, labels: Tensor, num_labels: int) -> Tensor:
    """HF problem_type convention: regression (MSE), single-label (CE) or multi-label (BCE with logits)."""
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.view(-1), labels.float().view(-1)) if num_labels == 1 else F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.float())
