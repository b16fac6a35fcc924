"""Export another cohort with a trained model: `python -m fusion.export ckpt_path=... data.manifest=... data.vcf=...`.

The model (config, weights and everything its encoders were built from: training-split dosage means and kept sites,
the reference's tokens, a fitted tangent space) stays the training run's; only the data that flows through it
changes. The `data.*` keys given replace the run's cohort files (the others stay the run's), the new cohort is loaded
and checked as fusion.train checks one (fusion.app.build.build_inputs), and then compared with the cohort the model
was trained on, before any compute (check_compatible): the same regions (names and coordinates), the same reference
genome over them (contig lengths), the same genotype sites for the dosage encoder, the same site count for a
site-aware tokens transform, the same atlas labels (and parcel coordinates when the run had them), and the same
shapes of every input a transform derives from the data for its encoder. A difference is a CohortMismatch naming the
file and what differs. The tokens transform's length L is pinned to the training run's when its max_len was null
(longer haplotypes of the new cohort keep their central L bases, with a warning), so every tensor has the shape the
encoder was built for.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fusion.app.build import Inputs, build_inputs, genomics_nodes, use_feature_cache
from fusion.app.cohort_source import COHORT_KEYS
from fusion.errors import FusionInputError
from fusion.multi_input import MAIN, MultiInputTransform
from genomics.checkpoints import sha256_file

log = logging.getLogger(__name__)
FILE_KEYS = (*COHORT_KEYS, "genotypes")  # the cohort's files (load_cohort's file arguments)
SETTING_KEYS = ("root", "strict", "split_fractions")  # load_cohort's settings an export may give for the new cohort


class CohortMismatch(FusionInputError):
    """The cohort to export differs from the one the model was trained on in something the model depends on."""


def given(data: DictConfig | dict | None) -> dict:
    """The data.* keys set on the export command line (null = not given)."""
    data = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else dict(data or {})
    unknown = sorted(set(data) - set(FILE_KEYS) - set(SETTING_KEYS))
    if unknown:
        raise FusionInputError(
            f"data.{unknown[0]}: not a cohort key an export takes ({', '.join(FILE_KEYS + SETTING_KEYS)})"
        )
    return {k: v for k, v in data.items() if v is not None}


def other_cohort_config(cfg: DictConfig, data: dict) -> DictConfig | None:
    """The training run's config with the given cohort files swapped in; None when no cohort file is given.
    data.genotypes follows a new data.vcf unless given; data.root is the given one (the run's confines the run's
    files, not another cohort's)."""
    files = {k: v for k, v in data.items() if k in FILE_KEYS}
    if not files:
        return None
    new = copy.deepcopy(cfg)
    with open_dict(new):
        for key, value in files.items():
            new.data[key] = str(value)
        if "vcf" in files and "genotypes" not in files:
            new.data.genotypes = str(files["vcf"])
        new.data.root = data.get("root")
        for key in ("strict", "split_fractions"):
            if key in data:
                new.data[key] = data[key]
    return new


def cohort_files(cfg: DictConfig) -> dict[str, dict]:
    """{key: {"path", "sha256"}} of cfg.data's cohort files (provenance; the new cohort's identity on resume)."""
    out = {}
    for key in FILE_KEYS:
        value = cfg.data.get(key)
        if value is not None and Path(str(value)).is_file() and key not in out:
            path = Path(str(value)).expanduser().resolve()
            out[key] = {"path": str(path), "sha256": sha256_file(path)}
    return out


def default_out_dir(run_dir: Path, files: dict[str, dict]) -> Path:
    """<run_dir>/export_<manifest stem>_<8 hex of the cohort files' SHA-256s>: never the training export's folder."""
    digest = hashlib.sha256("".join(f"{k}={v['sha256']};" for k, v in sorted(files.items())).encode()).hexdigest()
    return run_dir / f"export_{Path(files['manifest']['path']).stem}_{digest[:8]}"


def input_transforms(transform) -> dict:
    """{name: transform} of a genomics tower's inputs: MAIN alone, or every input of a MultiInputTransform."""
    return dict(transform.transforms) if isinstance(transform, MultiInputTransform) else {MAIN: transform}


def pin_length(cfg: DictConfig, trained: Inputs) -> dict[str, int]:
    """Each tokens transform whose L came from the data (max_len null) gets the training run's L: {input: L}."""
    nodes, pinned = genomics_nodes(cfg), {}
    for name, transform in input_transforms(trained.genomics_transform).items():
        node = nodes[name].get("transform")
        if node is None or "max_len" not in node or node.max_len is not None or not hasattr(transform, "length"):
            continue
        with open_dict(cfg):
            node.max_len = int(transform.length)
        pinned[name] = int(transform.length)
    return pinned


def load_other(cfg: DictConfig, trained: Inputs, model, eval_batch_size: int):
    """(inputs, datamodule) of the cohort in cfg, checked against the training run's `trained` inputs; the
    datamodule serves `model` (the trained one): its frozen towers' features come from the frozen-feature cache
    when the run uses one (fusion.app.build.use_feature_cache), computed with the trained encoders."""
    pinned = pin_length(cfg, trained)
    inputs = build_inputs(cfg)
    check_compatible(trained, inputs, pinned)
    loader = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
              if k not in (*FILE_KEYS, *SETTING_KEYS)}  # fmt: skip
    loader.update(batch_size=0, eval_batch_size=eval_batch_size)  # 0: export never asks for a training loader
    datamodule = instantiate(loader, cohort=inputs.cohort, genomics_transform=inputs.genomics_transform,
                             brain_transform=inputs.brain_transform)  # fmt: skip
    transforms = {"genomics": inputs.genomics_transform, "brain": inputs.brain_transform}
    use_feature_cache(cfg, inputs.cohort, datamodule, model, transforms)
    return inputs, datamodule


def first_difference(a: list, b: list) -> int:
    """Index of the first position where two lists differ (the shorter's length when one extends the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_compatible(trained: Inputs, new: Inputs, pinned: dict[str, int] | None = None) -> None:
    """Raise CohortMismatch listing every difference that matters to the trained model (module docstring)."""
    a, b = trained.cohort, new.cohort
    problems = []
    ra = [(r.name, r.contig, r.start, r.end) for r in a.regions]
    rb = [(r.name, r.contig, r.start, r.end) for r in b.regions]
    if ra != rb:
        first = first_difference(ra, rb)
        problems.append(
            f"data.regions={b.files['regions']}: {len(rb)} usable regions, the model was trained on {len(ra)} "
            f"({a.files['regions']}); first difference at region {first + 1}: "
            f"{region(rb, first)} here, {region(ra, first)} in training"
        )
    contigs = sorted({r.contig for r in a.regions})
    lengths = [(c, a.contig_lengths.get(c), b.contig_lengths.get(c)) for c in contigs]
    differ = [f"{c} {y} bp (training {x} bp)" for c, x, y in lengths if x != y]
    if differ and ra == rb:
        problems.append(f"data.reference={b.files['reference']}: another genome than the model's "
                        f"({a.files['reference']}): {', '.join(differ[:5])}")  # fmt: skip
    new_inputs = input_transforms(new.genomics_transform)
    for name, ta in input_transforms(trained.genomics_transform).items():
        if name not in new_inputs:
            problems.append(f"genomics_inputs.{name}: the model has this input; give it here too")
            continue
        key = "data" if name == MAIN else f"genomics_inputs.{name}.transform"  # where its files are given
        problems += genomics_differences(ta, new_inputs[name], new, (pinned or {}).get(name), key)
    la, lb = np.asarray(a.labels), np.asarray(b.labels)
    if la.shape != lb.shape or not np.array_equal(la, lb):
        only = sorted(set(lb.tolist()) ^ set(la.tolist()))[:10]
        problems.append(f"data.atlas={b.files['atlas']}: {len(lb)} parcels, the model was trained on {len(la)} "
                        f"({a.files['atlas']}); labels in one atlas only: {only}")  # fmt: skip
    elif a.coords is not None and (b.coords is None or not np.allclose(a.coords.xyz, b.coords.xyz, atol=1e-3)):
        what = "none given" if b.coords is None else "different coordinates"
        problems.append(f"data.atlas_coords={b.files.get('atlas_coords')}: {what}; the model was trained with "
                        f"{a.files.get('atlas_coords')}")  # fmt: skip
    if not problems:  # the shapes below follow from the differences above; otherwise they only repeat them
        problems += derived_differences(trained, new)
    if problems:
        raise CohortMismatch(
            f"cohort {b.manifest} cannot be embedded by this model (trained on {a.manifest}):\n  "
            + "\n  ".join(problems)
            + "\nGive the files the model was trained on (data.regions=, data.atlas=, ...) or retrain"
        )


def nth(items: list, i: int) -> str:
    return str(items[i]) if i < len(items) else "none"


def region(regions: list[tuple], i: int) -> str:
    return f"{regions[i][0]} {regions[i][1]}:{regions[i][2] + 1}-{regions[i][3]}" if i < len(regions) else "none"


def genomics_differences(ta, tb, new: Inputs, pinned: int | None, key: str = "data") -> list[str]:
    """What differs between one genomics input's transform in training (ta) and here (tb); `key`: the config node
    that names its files (data, or genomics_inputs.<name>.transform)."""
    out = []
    if getattr(ta, "sites", False) and ta.n_sites != tb.n_sites:
        vcf = getattr(tb, "vcf", None) or new.cohort.vcf
        out.append(f"{key}.vcf={vcf}: at most {tb.n_sites} sites per region, the model's site-aware encoder was "
                   f"built for {ta.n_sites}")  # fmt: skip
    if hasattr(ta, "table") and hasattr(ta.table, "sites"):  # dosages: one feature per genotype site
        sa, sb = [s.name for s in ta.table.sites], [s.name for s in tb.table.sites]
        if sa != sb:
            first = first_difference(sa, sb)
            out.append(
                f"{key}.genotypes={tb.genotypes}: {len(sb)} genotype sites in the regions, the model's dosage encoder "
                f"has {len(sa)} ({ta.genotypes}); first difference at site {first + 1}: "
                f"{nth(sb, first)} here, {nth(sa, first)} in training"
            )
    if pinned is not None and hasattr(tb, "haplotypes"):
        natural = tb.haplotypes.max_length()
        if natural > pinned:
            log.warning("%s: haplotypes up to %d tokens; the model's L is %d: they keep their central %d bases",
                        new.cohort.vcf, natural, pinned, pinned)  # fmt: skip
    return out


def derived_differences(trained: Inputs, new: Inputs) -> list[str]:
    """Shapes and counts each transform derives from the data for its encoder (transform.encoder_inputs())."""
    pairs = [("brain", trained.brain_transform, new.brain_transform)]
    new_inputs = input_transforms(new.genomics_transform)
    for name, ta in input_transforms(trained.genomics_transform).items():
        if name in new_inputs:
            pairs.append(("genomics" if name == MAIN else f"genomics_inputs.{name}", ta, new_inputs[name]))
    out = []
    for what, ta, tb in pairs:
        if getattr(ta, "window", None) != getattr(tb, "window", None):
            out.append(f"{what}.transform.window: {tb.window}, the model's {ta.window}")
        if not hasattr(ta, "encoder_inputs"):
            continue
        da, db = ta.encoder_inputs(), tb.encoder_inputs()
        for key in sorted(set(da) | set(db)):
            x, y = da.get(key), db.get(key)
            x, y = (tuple(v.shape) if isinstance(v, torch.Tensor | np.ndarray) else v for v in (x, y))
            if x != y:
                out.append(f"{what} input {key}: {y} from {new.cohort.manifest}, {x} when the model was built")
    return out
