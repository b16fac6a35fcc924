"""Reading and writing Caduceus checkpoints in the published Hugging Face layout, from local folders only.

References: the published kuleshov-group/caduceus-* model folders (config.json + model.safetensors); transformers'
save_pretrained convention of storing a tied parameter once, under its first name in state_dict() order.

Layout: config.json (CaduceusConfig) and model.safetensors (or pytorch_model.bin, read with weights_only=True, or
their sharded form); files are read and written by genomics.checkpoints.
Keys of CaduceusForMaskedLM carry the `caduceus.` prefix (caduceus.backbone.*, lm_head.*); AutoModel/backbone
checkpoints do not. Tied aliases (mamba_rev.in_proj/out_proj, the LM head weight) are absent from the published files
and are re-tied after loading; when present they must equal their source. `complement_map` buffers are derived from
the config when absent. Loading a checkpoint into another head class drops the other head's keys (lm_head.* into a
classifier) and leaves the new head initialised (score.*), both logged. Anything else missing, unexpected or of the
wrong shape raises CheckpointMismatchError (genomics.checkpoints, re-exported here) naming the keys. Remote code
(auto_map) is never executed.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from genomics.checkpoints import CheckpointMismatchError, check_state_dict, read_hf_weights, write_hf_weights

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
PREFIX = "caduceus."
HEADS = ("lm_head", "score")  # top-level head modules of the Caduceus classes


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: source} for state_dict names that refer to a tensor listed earlier under another name."""
    first, aliases = {}, {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def adapt_state_dict(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (prefix), drop (foreign heads, tied aliases) and check a checkpoint's keys against the model's."""
    expected = model.state_dict()
    aliases = tied_aliases(model)
    model_prefixed = any(k.startswith(PREFIX) for k in expected)
    ckpt_prefixed = any(k.startswith(PREFIX) for k in state_dict)
    sd, foreign = {}, set()
    for key, value in state_dict.items():
        if model_prefixed and not ckpt_prefixed and key.startswith("backbone."):
            key = PREFIX + key
        elif ckpt_prefixed and not model_prefixed:
            if not key.startswith(PREFIX):
                foreign.add(key)  # a head, and this model is the bare backbone
                continue
            key = key[len(PREFIX) :]
        sd[key] = value

    own_heads = {k.split(".")[0] for k in expected if k.split(".")[0] in HEADS}
    foreign |= {k for k in sd if k.split(".")[0] in HEADS and k.split(".")[0] not in own_heads}
    if foreign:
        log.info("ignoring the keys of another Caduceus head: %s", ", ".join(sorted(foreign)))
    for key in foreign:
        sd.pop(key, None)
    for alias, source in aliases.items():  # tied aliases: optional, equal to their source when present
        if alias not in sd:
            continue
        value = sd.pop(alias)
        if source not in sd:
            sd[source] = value
        elif sd[source].shape != value.shape or not torch.equal(sd[source], value):
            raise CheckpointMismatchError(f"tied parameters differ in the checkpoint: {alias} != {source}")

    canonical = {k: v for k, v in expected.items() if k not in aliases}
    ckpt_heads = {k.split(".")[0] for k in sd if k.split(".")[0] in HEADS}
    new_head = {k for k in canonical if k.split(".")[0] in own_heads - ckpt_heads}
    derived = {k for k in canonical if k.endswith("complement_map")}
    check_state_dict(canonical, sd, "checkpoint", type(model).__name__, optional=new_head | derived)
    if new_head:
        log.warning("newly initialised (not in the checkpoint): %s", ", ".join(sorted(new_head)))
    return sd


def load_state_dict_into(model: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """adapt_state_dict, copy into the model's parameters, re-tie."""
    sd = adapt_state_dict(model, state_dict)
    model.load_state_dict(sd, strict=False)  # completeness was checked above
    model.tie_weights()


def load_pretrained(cls, folder, *args, config=None, device=None, dtype=None, torch_dtype=None, **kwargs):
    """cls.from_pretrained: build cls from folder/config.json (or `config`) and load its weights.

    Keyword arguments that cls.__init__ takes (pooling_strategy, ...) go to the constructor; the rest override config
    attributes (e.g. ssm_backend="torch", num_labels=2). `local_files_only` is accepted; `trust_remote_code=True` and
    hub ids are refused.
    """
    from genomics.caduceus.config import CaduceusConfig

    if kwargs.pop("trust_remote_code", False):
        raise ValueError("Caduceus is implemented in genobrain; trust_remote_code is never used")
    kwargs.pop("local_files_only", None)
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder}/{CONFIG_NAME} not found: Caduceus loads local checkpoint folders only")
    params = inspect.signature(cls.__init__).parameters
    init_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in params and k not in ("self", "config")}
    config = config if config is not None else CaduceusConfig.from_pretrained(folder, local_files_only=True)
    for key, value in kwargs.items():
        if not hasattr(config, key):
            raise TypeError(f"{cls.__name__}.from_pretrained got an unknown argument {key!r}")
        setattr(config, key, value)
    model = cls(config, *args, **init_kwargs)
    load_state_dict_into(model, read_hf_weights(folder))
    if device is not None or (dtype or torch_dtype) is not None:
        model.to(device=device, dtype=dtype or torch_dtype)
    return model.eval()


def save_pretrained(model, folder: str | Path) -> None:
    """config.json + model.safetensors, one entry per tensor (tied aliases omitted), metadata format=pt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    aliases = tied_aliases(model)
    write_hf_weights({k: v for k, v in model.state_dict().items() if k not in aliases}, folder)
