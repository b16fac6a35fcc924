"""Build the run's objects from a composed config: cohort first, then transforms, datamodule and model from it."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict


def instantiate_dict(cfg: DictConfig | None) -> list:
    """Callbacks / loggers: every entry of the group that has a _target_."""
    return [instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def build(cfg: DictConfig):
    """Instantiate datamodule and LightningModule from a composed config (cohort paths must be resolved)."""
    try:
        datamodule = instantiate(
            cfg.data,
            genomics_transform=instantiate(cfg.genomics.transform),
            brain_transform=instantiate(cfg.brain.transform),
            _recursive_=False,
        )
    except InstantiationException as err:  # a cohort problem: show the cohort's own message, not Hydra's wrapper
        if isinstance(err.__cause__, (ValueError, OSError)):
            raise err.__cause__ from None
        raise
    with open_dict(cfg):
        cfg.data.n_regions = datamodule.cohort.n_regions
        cfg.data.n_parcels = datamodule.cohort.n_parcels
    model = instantiate(cfg.model)
    return datamodule, model


def format_retrieval(metrics: dict, n: int) -> str:
    lines = [f"test retrieval on {n} held-out subjects (chance R@1 = {1 / max(n, 1):.3f}):"]
    for direction in ("g2b", "b2g"):
        keys = ("R@1", "R@5", "R@10", "mean_rank", "median_rank")
        vals = "  ".join(f"{k}={metrics.get(f'test/{direction}/{k}', float('nan')):.3f}" for k in keys)
        lines.append(f"  {'genome->brain' if direction == 'g2b' else 'brain->genome'}: {vals}")
    return "\n".join(lines)
