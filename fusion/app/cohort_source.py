"""Resolve the `data` config group to files on disk: a user's cohort as given, or the generated demo cohort.

With data.manifest null, the demo cohort is generated on first use into <paths.cache_dir>/demo_cohort/<hash of the
demo parameters> (atomically; a finished cohort is reused, a half-written one never is) and data.* point at it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)
COHORT_KEYS = ("manifest", "vcf", "reference", "regions", "atlas", "atlas_coords")


def demo_cohort_dir(cache_dir: str | Path, params: dict) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "demo_cohort" / digest


def resolve_cohort(cfg: DictConfig) -> None:
    """Fill cfg.data's file keys (in place). Users' cohorts must name every file; the demo fills them all."""
    data = cfg.data
    if data.manifest is None:
        from fusion.demo.generator import demo_params, generate_demo_cohort

        params = demo_params(**OmegaConf.to_container(cfg.demo, resolve=True))
        out = demo_cohort_dir(cfg.paths.cache_dir, params)
        log.info("data.manifest is null: using the demo cohort in %s", out)
        paths = generate_demo_cohort(out, **params)
        with open_dict(cfg):
            for key in COHORT_KEYS:
                data[key] = str(paths[key])
        return
    missing = [k for k in COHORT_KEYS if k != "atlas_coords" and data.get(k) is None]
    if missing:
        raise ValueError(
            f"data.manifest is set ({data.manifest}) but {', '.join('data.' + k for k in missing)} "
            "is not; give every cohort file on the command line (see kb/cohort-format.md)"
        )
