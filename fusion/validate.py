"""Validate a cohort before training: `python -m fusion.validate [data.manifest=... data.vcf=...] [genomics=X
brain=Y] [data.root=DIR] [deep=true]` (kb/validation.md).

Composes configs/train.yaml as fusion.train does (any train override is accepted, so the chosen encoders' window and
context are checked; without data.* it validates the demo cohort), then runs the one cohort check
(fusion.cohort.load_cohort, via fusion.app.build.build_inputs) at the "full" level (every REF site, the FASTA's
alphabet in the regions, three volumes per scan) or with deep=true the "deep" level (every volume). Prints every
problem, each naming its subject, file and line or site, with what to do. Exit status: 0 clean (warnings listed),
1 errors found, 2 the command itself is wrong (an override Hydra refuses). Writes nothing into the cohort's folders
(a FASTA without an index is indexed in paths.cache_dir).
"""

from __future__ import annotations

import logging
import sys
import time

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fusion.app import CONFIG_DIR
from fusion.errors import USER_ERRORS

USAGE = __doc__.split("\n\n")[0]


def parse(argv: list[str]) -> tuple[list[str], bool, str | None]:
    """(Hydra overrides, deep, data.root); deep= and data.root= are this command's own (the data group may lack
    a root key)."""
    overrides, deep, root = [], False, None
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "deep":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"deep must be true or false, got {value!r}")
            deep = value.lower() == "true"
        elif key.lstrip("+") == "data.root":
            root = value or None
        else:
            overrides.append(arg)
    return overrides, deep, root


def compose_config(overrides: list[str], root: str | None = None) -> DictConfig:
    import fusion.app.cohort_source  # noqa: F401  (registers the demo group in Hydra's ConfigStore)
    import fusion.app.module  # noqa: F401  (registers the launch_dir resolver the paths group uses)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if root is not None:
        with open_dict(cfg):
            cfg.data.root = root
    return cfg


def validate(cfg: DictConfig, deep: bool = False):
    """The cohort of cfg checked at the full (or deep) level: (Inputs, report text)."""
    from fusion.app.build import build_inputs
    from fusion.app.cohort_source import resolve_cohort

    resolve_cohort(cfg)
    return build_inputs(cfg, checks="deep" if deep else "full", raise_on_error=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides, deep, root = parse(argv)
        cfg = compose_config(overrides, root)
        OmegaConf.to_container(cfg.data, resolve=True)  # a bad interpolation is the command's fault
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"fusion.validate: {err}\n{USAGE}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        inputs = validate(cfg, deep)
        report = inputs.report
    except USER_ERRORS as err:
        report = getattr(err, "report", None)
        if report is None:  # not a cohort report: a user error the check could not go past
            print(f"fusion.validate: {err}", file=sys.stderr)
            return 2
    except (ValueError, OSError) as err:  # e.g. a transform's argument the config got wrong
        print(f"fusion.validate: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    level = "deep (every volume)" if deep else "full (three volumes per scan)"
    print(report.summary(limit=None))
    print(f"validated at the {level} level in {seconds:.1f} s: " + ("OK" if report.ok else "FAILED"))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
