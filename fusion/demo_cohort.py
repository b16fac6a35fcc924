"""Generate the demo cohort: `python -m fusion.demo_cohort out=DIR [n_subjects=N] [seed=S] [key=value ...]` (Hydra).

Parameters and their meaning: fusion.demo.config.DemoCohortConfig (the `demo` group's `default` option, registered
by fusion.app.cohort_source; composed at the top level by configs/demo_cohort.yaml). Library function:
fusion.demo.generate_demo_cohort.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import fusion.app.cohort_source  # noqa: F401  (registers the `demo` config group)
from fusion.app import CONFIG_DIR
from fusion.demo.generator import generate_demo_cohort

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="demo_cohort")
def main(cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    out, overwrite = params.pop("out"), params.pop("overwrite")
    paths = generate_demo_cohort(out, overwrite=overwrite, **params)
    log.info("demo cohort in %s:", Path(out).absolute())
    for key, path in paths.items():
        log.info("  data.%s=%s", key, path)


if __name__ == "__main__":
    main()
