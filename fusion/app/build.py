"""Build the run's objects from a composed config: cohort first, then transforms, datamodule and model from it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from fusion.app.checks import check_context, cohort_arguments
from fusion.app.datamodule import AlignmentDataModule
from fusion.app.module import AlignmentModule
from fusion.cohort import Cohort, CohortError, CohortReport, exclude_short_scans, load_cohort
from fusion.cohort_checks import Problem
from fusion.feature_cache import FrozenFeatureCache, cached_modalities, file_digest, file_digests, identity_settings
from fusion.multi_input import MAIN, MultiInputEncoder, MultiInputHead, MultiInputTransform

FILE_SETTINGS = ("genotypes", "vcf", "reference")  # transform keys naming a file an input reads (content-hashed)


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Callbacks / loggers: every entry of the group that has a _target_."""
    return [instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


@dataclass
class Inputs:
    """The cohort (loaded and checked once) and the transforms built from it: what every entry point checks before
    spending compute (fusion.validate stops here)."""

    cohort: Cohort
    report: CohortReport
    genomics_transform: object
    brain_transform: object


@dataclass
class Run:
    """What build() makes from a config: the cohort (loaded and checked once) and what is built from it."""

    cohort: Cohort
    report: CohortReport
    datamodule: AlignmentDataModule
    model: AlignmentModule


def build_inputs(cfg: DictConfig, checks: str = "cheap", raise_on_error: bool = True) -> Inputs:
    """Config -> cohort (fusion.cohort.load_cohort at `checks` level; cohort paths must be resolved, see
    cohort_source) -> transforms, with the checks that need them: scans shorter than the brain encoder's window,
    haplotypes longer than the genomics encoder's context (fusion.app.checks). raise_on_error=False (validation)
    reports those in the returned report instead of raising CohortError."""
    cohort, report = load_cohort(**cohort_arguments(cfg), checks=checks)
    nodes = genomics_nodes(cfg)
    transforms = {name: instantiate_with(node.transform, cohort.inputs("genomics")) for name, node in nodes.items()}
    genomics_transform = transforms[MAIN]
    if len(transforms) > 1:
        genomics_transform = MultiInputTransform(transforms, cohort.subjects["subject_id"].astype(str).tolist())
    brain_transform = instantiate_with(cfg.brain.transform, cohort.inputs("brain"))
    strict = bool(cfg.data.get("strict", False)) and raise_on_error
    try:
        exclude_short_scans(cohort, report, brain_transform, strict=strict)  # its window and review()
    except CohortError:
        if raise_on_error:
            raise
        report.problems.append(Problem("error", str(cohort.manifest), "no usable subject left (see above)"))
    for name, node in nodes.items():
        problem = check_context(node, transforms[name], cohort.regions, report)
        if problem is not None and problem.severity == "error" and raise_on_error:
            raise CohortError(f"{problem}\n{report.summary()}", report)
    return Inputs(cohort, report, genomics_transform, brain_transform)


def build(cfg: DictConfig, inputs: Inputs | None = None) -> Run:
    """Config -> cohort and transforms (build_inputs, unless given) -> datamodule -> encoders -> model. Transforms and
    encoders get the cohort facts their constructors name (Cohort.inputs: reference, vcf, regions, n_regions for
    genomics; atlas, labels, atlas_coords, n_parcels for brain)."""
    inputs = inputs if inputs is not None else build_inputs(cfg)
    cohort, report = inputs.cohort, inputs.report
    genomics_transform, brain_transform = inputs.genomics_transform, inputs.brain_transform
    cohort_args = set(inspect.signature(load_cohort).parameters)
    loader = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k not in cohort_args}
    # _partial_: the cohort and transforms reach the datamodule as the objects they are (instantiate's own kwargs
    # would copy the Cohort dataclass into an OmegaConf node: slow for large cohorts, and its properties lost)
    datamodule = instantiate(loader, _partial_=True)(
        cohort=cohort,
        genomics_transform=genomics_transform,
        brain_transform=brain_transform,
    )
    net = genomics_tower(cfg, cohort, genomics_transform)
    net["brain_encoder"] = instantiate_with(cfg.brain.encoder, encoder_inputs(cohort, "brain", brain_transform))
    model = instantiate(cfg.model, net=net)
    use_feature_cache(cfg, cohort, datamodule, model, {"genomics": genomics_transform, "brain": brain_transform})
    return Run(cohort, report, datamodule, model)


def use_feature_cache(cfg: DictConfig, cohort: Cohort, datamodule, model: AlignmentModule, transforms: dict) -> list:
    """Attach the frozen-feature cache (fusion.feature_cache) for the towers that `feature_cache.enabled` selects
    (absent from a config, e.g. an older run's: off); returns those modalities. Export builds through here too."""
    options = cfg.get("feature_cache")
    if options is None:
        return []
    towers = {m: getattr(model.net, m) for m in ("genomics", "brain")}
    cached = cached_modalities(options.enabled, {m: (t.encoder, transforms[m]) for m, t in towers.items()})
    if not cached:
        return []
    nodes = {"genomics": genomics_nodes(cfg), "brain": {MAIN: cfg.brain}}
    settings = {}
    for m in cached:
        parts = {k: OmegaConf.to_container(v, resolve=True) for k, v in nodes[m].items()}
        if len(parts) == 1:  # one input: its own settings (the store keys of runs without genomics_inputs)
            settings[m] = identity_settings(m, parts[MAIN]["encoder"], parts[MAIN]["transform"], cohort)
        else:
            encoders = {k: p["encoder"] for k, p in parts.items()}
            settings[m] = identity_settings(m, encoders, {k: p["transform"] for k, p in parts.items()}, cohort)
            # what the inputs read beyond the cohort's genomics files: the manifest (columns) and files they name
            named = {"manifest": file_digest(cohort.files["manifest"])}
            for k, p in parts.items():
                for key in FILE_SETTINGS:
                    if p["transform"].get(key):
                        named |= file_digests(f"{k}.{key}", p["transform"][key])
            settings[m]["input_files"] = named
    cache = FrozenFeatureCache(
        options.dir,
        {m: (towers[m].encoder, settings[m]) for m in cached},
        batch_size=datamodule.eval_batch_size,
        num_workers=datamodule.num_workers,
    )
    datamodule.use_feature_cache(cache)
    for m in cached:
        towers[m].precomputed = True
    return cached


def genomics_nodes(cfg: DictConfig) -> dict[str, DictConfig]:
    """The genetic inputs' config nodes (transform, encoder, head each): MAIN = cfg.genomics, then every
    genomics_inputs.<name> (fusion.multi_input: `+genomics@genomics_inputs.<name>=<option>`)."""
    extra = cfg.get("genomics_inputs") or {}
    if MAIN in extra:
        raise ValueError(f"genomics_inputs.{MAIN}: that name is the genomics= input's; choose another")
    return {MAIN: cfg.genomics, **extra}


def genomics_tower(cfg: DictConfig, cohort: Cohort, transform) -> dict:
    """{"genomics_encoder": ...} for the model's net, plus "genomics_head" (a factory) with several inputs: each
    input's encoder from its own transform, the heads from each input's head node (fusion.multi_input)."""
    if not isinstance(transform, MultiInputTransform):
        inputs = encoder_inputs(cohort, "genomics", transform)
        return {"genomics_encoder": instantiate_with(cfg.genomics.encoder, inputs)}
    nodes = genomics_nodes(cfg)
    encoders = {
        name: instantiate_with(node.encoder, encoder_inputs(cohort, "genomics", transform.transforms[name]))
        for name, node in nodes.items()
    }
    encoder = MultiInputEncoder(encoders)
    heads = {name: instantiate(node.head) for name, node in nodes.items()}  # partials: head(in_dim=...)
    return {"genomics_encoder": encoder, "genomics_head": partial(MultiInputHead, heads=heads, widths=encoder.widths)}


def encoder_inputs(cohort: Cohort, modality: str, transform) -> dict:
    """The cohort's facts plus what the transform derived from the data (e.g. GenotypeDosages' site count)."""
    derived = transform.encoder_inputs() if hasattr(transform, "encoder_inputs") else {}
    return cohort.inputs(modality) | derived


def instantiate_with(node: DictConfig, inputs: dict):
    """instantiate(node) with those `inputs` (e.g. Cohort.inputs) its target's constructor names, unless set."""
    params = inspect.signature(get_object(node._target_)).parameters
    given = {k: v for k, v in inputs.items() if k in params and node.get(k) is None}
    try:
        factory = instantiate(node, _partial_=True)  # then call: Hydra would turn dataclasses and lists into configs
        return factory(**given)
    except InstantiationException as err:  # a user's mistake: show its own message, not Hydra's wrapper
        if isinstance(err.__cause__, (ValueError, OSError)):
            raise err.__cause__ from None
        raise


def format_retrieval(metrics: dict, n: int) -> str:
    lines = [f"test retrieval on {n} held-out subjects (chance R@1 = {1 / max(n, 1):.3f}):"]
    for direction in ("g2b", "b2g"):
        keys = ("R@1", "R@5", "R@10", "mean_rank", "median_rank")
        vals = "  ".join(f"{k}={metrics.get(f'test/{direction}/{k}', float('nan')):.3f}" for k in keys)
        lines.append(f"  {'genome->brain' if direction == 'g2b' else 'brain->genome'}: {vals}")
    return "\n".join(lines)
