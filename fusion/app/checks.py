"""Checks that need the composed config, beside fusion.cohort's file checks: one implementation for fusion.train,
fusion.export and fusion.validate (kb/validation.md).

    cohort_arguments(cfg)            the load_cohort keyword arguments of cfg.data (+ the cache for FASTA indexes)
    model_context(cfg.genomics)      (tokens, severity, why) of the genomics encoder's context; (None, ..) = no limit
    check_context(...)               haplotype length L (the tokens transform's) vs that context, as a Problem
    check_targets(cfg, source)       every `_target_` under the project's allowed packages (a run's saved config)
    check_checkpoint(path)           a checkpoint to resume from reads weights-only (no pickled code)
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.cohort import CohortReport, load_cohort
from fusion.cohort_checks import Problem
from fusion.errors import InputFileNotFound, UnsafeConfigError

ALLOWED_TARGETS = ("genomics.", "brain.", "fusion.", "torch.optim.", "lightning.pytorch.")
CADUCEUS_MAX = 131_072  # the published tokenizer's model_max_length (genomics.caduceus.tokenizer)


def cohort_arguments(cfg: DictConfig) -> dict:
    """cfg.data's keys that load_cohort takes (files, strict, split_fractions, root, ...) and cache_dir."""
    params = set(inspect.signature(load_cohort).parameters)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    args = {k: v for k, v in data.items() if k in params}
    if "cache_dir" not in args and cfg.get("paths") is not None and cfg.paths.get("cache_dir") is not None:
        args["cache_dir"] = cfg.paths.cache_dir
    return args


def model_context(genomics: DictConfig) -> tuple[int | None, str, str]:
    """(tokens per sequence the genomics encoder was trained on, "error" | "warning", where that number comes from).

    Caduceus: the published checkpoints' names (seqlen-131k, seqlen-1k; an error past it), a checkpoint folder's
    pretrain.json (fusion.app.pretrain; its window length, a warning: SSMs run longer, untested), the first-use
    pretraining's genomics.pretrain.data.seq_len (warning), else the tokenizer's 131,072 (error). Other encoders: none.
    """
    encoder = genomics.get("encoder") if genomics is not None else None
    if encoder is None or not str(encoder.get("_target_", "")).endswith("CaduceusGenomicsEncoder"):
        return None, "", ""
    checkpoint = encoder.get("checkpoint")
    if checkpoint:
        name = Path(str(checkpoint)).name
        m = re.search(r"seqlen-(\d+)(k?)", name)
        if m:
            n = int(m[1]) * (1024 if m[2] else 1)
            return n, "error", f"the checkpoint {name} was trained on {n:,}-token sequences"
        info = Path(str(checkpoint)) / "pretrain.json"
        try:
            n = int(json.loads(info.read_text())["inputs"]["data"]["seq_len"])
            return n, "warning", f"the checkpoint {checkpoint} was pretrained on {n:,}-token windows ({info.name})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    elif genomics.get("pretrain") is not None and genomics.pretrain.get("data") is not None:
        n = genomics.pretrain.data.get("seq_len")
        if n:
            return int(n), "warning", f"the model is pretrained on first use on {n:,}-token windows"
    return CADUCEUS_MAX, "error", f"Caduceus takes at most {CADUCEUS_MAX:,} tokens (its tokenizer's maximum)"


def check_context(genomics: DictConfig, transform, regions, report: CohortReport) -> Problem | None:
    """The tokens transform's L against model_context; the problem (also appended to report.problems) or None."""
    context, severity, why = model_context(genomics)
    if context is None or not hasattr(transform, "length"):
        return None
    fixed = getattr(transform, "max_len", None)
    length = fixed or transform.length
    if length <= context:
        return None
    if fixed:
        what = f"genomics.transform.max_len={fixed} tokens per haplotype is"
    else:
        longest = max(regions, key=len)
        what = (
            f"haplotype sequences are {length:,} tokens (longest region {longest.name}, {len(longest):,} bp, BED line "
            f"{longest.line}, + indel growth),"
        )
    problem = Problem(
        severity,
        "genomics.transform",
        f"{what} longer than the genomics encoder's context: {why}; set genomics.transform.max_len={context} (keeps "
        "each sequence's central bases) or use shorter regions",
    )
    report.problems.append(problem)
    return problem


def check_checkpoint(path: str | Path) -> None:
    """A checkpoint to resume from must exist and read weights-only (genomics.checkpoints.torch_load): a pickle that
    would run code is refused with GenomicsInputError before Lightning sees it."""
    from genomics.checkpoints import torch_load

    if not Path(path).is_file():
        raise InputFileNotFound(f"ckpt_path={path}: checkpoint not found")
    torch_load(path)


def check_targets(cfg: DictConfig, source: str | Path) -> None:
    """Raise UnsafeConfigError naming every `_target_` outside ALLOWED_TARGETS (at any depth of cfg)."""
    bad = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "_target_" and not (isinstance(value, str) and value.startswith(ALLOWED_TARGETS)):
                    bad.append(f"{where}={value!r}")
                walk(value, where)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg, "")
    if bad:
        raise UnsafeConfigError(
            f"{source}: refused: {len(bad)} `_target_`(s) outside the project's packages {list(ALLOWED_TARGETS)}: "
            f"{', '.join(bad[:10])}. A run folder's config is instantiated as code; only use configs written by "
            "fusion.train"
        )
