"""Build the run's objects from a composed config: cohort first, then transforms, datamodule and model from it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from fusion.app.checks import check_context, cohort_arguments
from fusion.app.datamodule import AlignmentDataModule
from fusion.app.module import AlignmentModule
from fusion.cohort import Cohort, CohortError, CohortReport, exclude_short_scans, load_cohort
from fusion.cohort_checks import Problem
from fusion.feature_cache import FrozenFeatureCache, cached_modalities, identity_settings


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
    genomics_transform = instantiate_with(cfg.genomics.transform, cohort.inputs("genomics"))
    brain_transform = instantiate_with(cfg.brain.transform, cohort.inputs("brain"))
    strict = bool(cfg.data.get("strict", False)) and raise_on_error
    try:
        exclude_short_scans(cohort, report, brain_transform, strict=strict)  # its window and review()
    except CohortError:
        if raise_on_error:
            raise
        report.problems.append(Problem("error", str(cohort.manifest), "no usable subject left (see above)"))
    problem = check_context(cfg.genomics, genomics_transform, cohort.regions, report)
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
    net = {
        "genomics_encoder": instantiate_with(
            cfg.genomics.encoder, encoder_inputs(cohort, "genomics", genomics_transform)
        ),
        "brain_encoder": instantiate_with(cfg.brain.encoder, encoder_inputs(cohort, "brain", brain_transform)),
    }
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
    settings = {
        m: identity_settings(
            m,
            OmegaConf.to_container(cfg[m].encoder, resolve=True),
            OmegaConf.to_container(cfg[m].transform, resolve=True),
            cohort,
        )
        for m in cached
    }
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
