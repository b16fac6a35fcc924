"""Resolve the `data` config group to files on disk: a user's cohort as given, or the generated demo cohort.

With data.manifest null, the demo cohort is generated on first use into <paths.cache_dir>/demo_cohort/<hash of the
demo parameters> (atomically; a finished cohort is reused, a half-written one never is) and data.* point at it. The
demo parameters are fusion.demo.DemoCohortConfig, registered here in Hydra's ConfigStore as the `demo` group's
`default` option (configs/train.yaml: `demo.<key>`; configs/demo_cohort.yaml: `<key>`), so they are written once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from fusion.cohort import CohortError
from fusion.demo.config import DemoCohortConfig, demo_params

log = logging.getLogger(__name__)
COHORT_KEYS = ("manifest", "vcf", "reference", "regions", "atlas", "atlas_coords")

ConfigStore.instance().store(group="demo", name="default", node=DemoCohortConfig)


def demo_cohort_dir(cache_dir: str | Path, params: dict) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "demo_cohort" / digest


def demo_cohort(cfg: DictConfig) -> dict[str, Path]:
    """The demo cohort of cfg.demo's parameters, generated on first use in the cache; its files by load_cohort key."""
    from fusion.demo.generator import generate_demo_cohort

    params = demo_params(**OmegaConf.to_container(cfg.demo, resolve=True))
    out = demo_cohort_dir(cfg.paths.cache_dir, params)
    log.info("using the demo cohort in %s", out)
    return generate_demo_cohort(out, **params)


def resolve_cohort(cfg: DictConfig) -> None:
    """Fill cfg.data's file keys (in place). Users' cohorts must name every file; the demo fills them all."""
    data = cfg.data
    if data.manifest is None:
        log.info("data.manifest is null: the demo cohort")
        paths = demo_cohort(cfg)
        with open_dict(cfg):
            for key in COHORT_KEYS:
                data[key] = str(paths[key])
        return
    missing = [k for k in COHORT_KEYS if k != "atlas_coords" and data.get(k) is None]
    if missing:
        raise CohortError(
            f"data.manifest is set ({data.manifest}) but {', '.join('data.' + k for k in missing)} "
            "is not; give every cohort file on the command line (see kb/cohort-format.md)"
        )


def resolve_reference(cfg: DictConfig) -> None:
    """A FASTA data group (MLM pretraining): data.reference as given, or the demo cohort's reference when null."""
    if cfg.data.get("reference") is None:
        log.info("data.reference is null: the demo cohort's reference FASTA")
        reference = demo_cohort(cfg)["reference"]
        with open_dict(cfg):
            cfg.data.reference = str(reference)
