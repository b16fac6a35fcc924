"""Compare modality encoders in one command: a genomics x brain x seed grid of fusion.train runs, then one table.

`python -m fusion.compare out=DIR genomics=kmer,dosage brain=fc,brainlm_mae_tiny seeds=0,1,2 [train key=value ...]`

Each cell composes configs/train.yaml with `genomics=<g> brain=<b> seed=<s>` plus the shared overrides (Hydra's compose
API, as the tests do) and runs fusion.train.train in this process, one cell after another: fit, then test on the
selected checkpoint, with the test-stage evaluation (fusion.app.evaluation) adding intervals, the shuffled-pairing
baseline, probes and CCA/PLS. Every cell config is composed before the first cell runs, so a wrong option or key fails
at once. Layout of DIR:
  cells/<g>__<b>__seed<s>.json   one finished cell: its settings, n_test, wall time, every test/ metric; written
                                 atomically when the cell ends, so a killed comparison, run again with the same
                                 command, skips the cells that have one and reruns the others from scratch
  runs/<g>__<b>__seed<s>/        the cell's fusion.train run folder (config_resolved.yaml, checkpoints/, csv/)
  results.csv                    one row per finished cell: genomics, brain, seed, n_test, then every test metric
  summary.md, summary.png        mean +- sd over seeds per pair (fusion.app.compare_report)
A cell that fails is logged with its traceback in cells/<cell>.error.txt and skipped; the others still run, and the
command exits 1 at the end.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, open_dict

from fusion.app import CONFIG_DIR
from fusion.app.resilience import write_atomic

log = logging.getLogger(__name__)

GRID_KEYS = ("genomics", "brain", "seeds")  # the grid's axes on the command line (comma-separated options)


@dataclass
class CompareConfig:
    out: Path  # the comparison's folder (cells/, runs/, results.csv, summary.md, summary.png)
    genomics: list[str] = field(default_factory=lambda: ["kmer"])  # configs/genomics options
    brain: list[str] = field(default_factory=lambda: ["fc"])  # configs/brain options
    seeds: list[int] = field(default_factory=lambda: [0])  # train.yaml's `seed` of each replicate
    overrides: list[str] = field(default_factory=list)  # every other key=value, passed to each cell's train.yaml

    def cells(self) -> list[tuple[str, str, int]]:
        return [(g, b, s) for g in self.genomics for b in self.brain for s in self.seeds]


def parse_args(argv: list[str]) -> CompareConfig:
    """Command line -> CompareConfig; comma lists parsed by Hydra's override grammar (so `genomics=a,b` reads as
    Hydra reads a sweep). Raises ValueError naming the argument that is wrong."""
    grid: dict[str, list] = {}
    out, rest = None, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {arg!r}")
        if key == "out":
            out = Path(value)
        elif key in GRID_KEYS:
            (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
            values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
            grid[key] = [str(v) for v in values] if key != "seeds" else [_seed(v, arg) for v in values]
        else:
            if key.lstrip("+~") in ("seed", "hydra.run.dir", "paths.output_dir"):
                raise ValueError(f"{arg!r}: set by the comparison per cell (use seeds=...)")
            rest.append(arg)
    if out is None:
        raise ValueError("out=DIR is required (the comparison's folder)")
    return CompareConfig(out=out, overrides=rest, **grid)


def _seed(value, arg: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{arg!r}: seeds must be integers") from None


def cell_name(genomics: str, brain: str, seed: int) -> str:
    return f"{genomics}__{brain}__seed{seed}"


def compose_cell(cfg: CompareConfig, genomics: str, brain: str, seed: int) -> DictConfig:
    """train.yaml for one cell, as fusion.train's @hydra.main would see it, writing into DIR/runs/<cell>/."""
    import fusion.train  # noqa: F401  (registers the application's resolvers and config-store nodes)

    overrides = [f"genomics={genomics}", f"brain={brain}", f"seed={seed}", *cfg.overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        composed = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(composed)  # ${hydra:...} and ${launch_dir:} resolve as in a real run
    with open_dict(composed):
        composed.paths.output_dir = str((cfg.out / "runs" / cell_name(genomics, brain, seed)).resolve())
        del composed.hydra
    return composed


def run_cell(cfg: CompareConfig, genomics: str, brain: str, seed: int) -> dict:
    """Train and test one cell (from scratch) -> its record (cells/<cell>.json, with the wall time compare adds)."""
    from fusion.train import train

    name = cell_name(genomics, brain, seed)
    run_dir = cfg.out / "runs" / name
    if run_dir.exists():  # a killed cell's partial run
        shutil.rmtree(run_dir)
    metrics, objects = train(compose_cell(cfg, genomics, brain, seed))
    record = {
        "genomics": genomics,
        "brain": brain,
        "seed": seed,
        "n_test": objects["datamodule"].split_sizes()["test"],
        "run_dir": str(run_dir),
        "metrics": {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("test/")},
    }
    if "best_epoch" in metrics:
        record["best_epoch"] = int(metrics["best_epoch"])
    return record


def load_cells(out: Path) -> list[dict]:
    """The finished cells' records (cells/*.json), grid order by file name."""
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def compare(cfg: CompareConfig) -> tuple[list[dict], list[str]]:
    """Run every unfinished cell, then write results.csv, summary.md, summary.png -> (records, failed cell names)."""
    from fusion.app.compare_report import write_reports

    cells_dir = cfg.out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    for cell in cfg.cells():  # every config composes before any compute
        compose_cell(cfg, *cell)
    failed = []
    for genomics, brain, seed in cfg.cells():
        name = cell_name(genomics, brain, seed)
        done = cells_dir / f"{name}.json"
        if done.exists():
            log.info("cell %s finished earlier: skipped", name)
            continue
        log.info("cell %s: training", name)
        start = time.perf_counter()
        try:
            record = run_cell(cfg, genomics, brain, seed) | {"wall_s": round(time.perf_counter() - start, 2)}
        except Exception:  # one bad cell must not stop an unattended grid
            log.exception("cell %s failed", name)
            write_atomic(cells_dir / f"{name}.error.txt", lambda fh: fh.write(traceback.format_exc().encode()))
            failed.append(name)
            continue
        finally:
            gc.collect()
        write_atomic(done, lambda fh, r=record: fh.write(json.dumps(r, indent=1).encode()))
        (cells_dir / f"{name}.error.txt").unlink(missing_ok=True)
        log.info("cell %s done in %.0f s", name, record["wall_s"])
    wanted = {cell_name(*c) for c in cfg.cells()}
    records = [r for r in load_cells(cfg.out) if cell_name(r["genomics"], r["brain"], r["seed"]) in wanted]
    write_reports(records, cfg.out)
    return records, failed
