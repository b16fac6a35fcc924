"""Build the run's objects from a composed config: cohort first, then transforms, datamodule and model from it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from fusion.app.datamodule import AlignmentDataModule
from fusion.app.module import AlignmentModule
from fusion.cohort import Cohort, CohortReport, exclude_short_scans, load_cohort


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Callbacks / loggers: every entry of the group that has a _target_."""
    return [instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


@dataclass
class Run:
    """What build() makes from a config: the cohort (loaded and checked once) and what is built from it."""

    cohort: Cohort
    report: CohortReport
    datamodule: AlignmentDataModule
    model: AlignmentModule


def build(cfg: DictConfig) -> Run:
    """Config -> cohort (every file read and checked once; cohort paths must be resolved, see cohort_source) ->
    transforms -> datamodule -> encoders -> model. Transforms and encoders get the cohort facts their constructors
    name (Cohort.inputs: reference, vcf, regions, n_regions for genomics; atlas, labels, atlas_coords, n_parcels for
    brain)."""
    data = cfg.data
    cohort_args = set(inspect.signature(load_cohort).parameters)
    cohort, report = load_cohort(**{k: data[k] for k in cohort_args if k in data})
    genomics_transform = instantiate_with(cfg.genomics.transform, cohort.inputs("genomics"))
    brain_transform = instantiate_with(cfg.brain.transform, cohort.inputs("brain"))
    exclude_short_scans(cohort, report, getattr(brain_transform, "window", None), strict=data.strict)
    loader = {k: v for k, v in OmegaConf.to_container(data, resolve=True).items() if k not in cohort_args}
    datamodule = instantiate(
        loader,
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
    return Run(cohort, report, datamodule, model)


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
