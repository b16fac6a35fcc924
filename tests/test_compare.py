"""python -m fusion.compare on a tiny grid (2 cells, the tiny demo cohort, fast_dev_run): tables, figure, resume."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import fusion.app.compare as app_compare
from fusion.app.compare import parse_args
from fusion.compare import main


@pytest.fixture
def grid_args(tmp_path, demo_cache, tiny_demo):
    out = tmp_path / "cmp"
    shared = [*tiny_demo, f"paths.cache_dir={demo_cache}", "+trainer.fast_dev_run=true",
              "+trainer.enable_progress_bar=false", "callbacks.evaluation.n_resamples=100"]  # fmt: skip
    return out, [f"out={out}", "genomics=kmer,dosage", "brain=fc", "seeds=0", *shared]


def test_grid_writes_results_summary_and_resumes(grid_args, monkeypatch):
    out, args = grid_args
    ran = []
    real_run_cell = app_compare.run_cell
    monkeypatch.setattr(app_compare, "run_cell", lambda cfg, *cell: ran.append(cell) or real_run_cell(cfg, *cell))
    assert main(args) == 0
    assert ran == [("kmer", "fc", 0), ("dosage", "fc", 0)]

    table = pd.read_csv(out / "results.csv")
    assert list(table.columns[:4]) == ["genomics", "brain", "seed", "n_test"]
    assert sorted(table["genomics"]) == ["dosage", "kmer"] and set(table["brain"]) == {"fc"}
    assert (table["n_test"] == 4).all() and (table["test/n"] == 4).all()
    for column in ("test/g2b/R@1", "test/g2b/R@1_lo", "test/shuffled/b2g/R@1", "test/cca/g2b/R@1", "test/pls/b2g/R@5"):
        assert table[column].between(0, 1).all(), column
    assert any(c.startswith("test/probe/age/fused/") for c in table.columns)
    summary = (out / "summary.md").read_text()
    assert "| kmer | fc | 1 | 4 | 0.250 |" in summary and "CCA R@1" in summary and "### age: R^2" in summary
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "cells" / "kmer__fc__seed0.json").read_text())
    assert record["metrics"]["test/g2b/R@1"] == table.set_index("genomics").loc["kmer", "test/g2b/R@1"]

    # killed during the second cell: its record is gone, its run folder half-written; the rerun redoes only that cell
    (out / "cells" / "dosage__fc__seed0.json").unlink()
    (out / "runs" / "dosage__fc__seed0" / "stale.txt").write_text("from the killed run")
    ran.clear()
    assert main(args) == 0
    assert ran == [("dosage", "fc", 0)]
    assert not (out / "runs" / "dosage__fc__seed0" / "stale.txt").exists()
    assert len(pd.read_csv(out / "results.csv")) == 2

    ran.clear()
    assert main(args) == 0 and ran == []  # everything finished: nothing runs, the tables are rewritten


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(grid_args, monkeypatch):
    out, args = grid_args

    def fail_on_dosage(cfg, genomics, brain, seed):
        if genomics == "dosage":
            raise RuntimeError("simulated failure")
        return {"genomics": genomics, "brain": brain, "seed": seed, "n_test": 4, "metrics": {"test/g2b/R@1": 0.5}}

    monkeypatch.setattr(app_compare, "run_cell", fail_on_dosage)
    assert main(args) == 1
    assert "simulated failure" in (out / "cells" / "dosage__fc__seed0.error.txt").read_text()
    assert list(pd.read_csv(out / "results.csv")["genomics"]) == ["kmer"]


def test_bad_commands_fail_before_any_compute(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app_compare, "run_cell", lambda *a: pytest.fail("a cell ran"))
    assert main(["genomics=kmer"]) == 2 and "out=DIR is required" in capsys.readouterr().err
    assert main([f"out={tmp_path}", "genomics=kmer,nope"]) == 2 and "nope" in capsys.readouterr().err
    assert main([f"out={tmp_path}", "seeds=a,b"]) == 2 and "integers" in capsys.readouterr().err
    assert main([f"out={tmp_path}", "seed=3"]) == 2 and "seeds=" in capsys.readouterr().err


def test_grid_arguments_parse_as_hydra_sweeps(tmp_path):
    cfg = parse_args([f"out={tmp_path}", "genomics=kmer,dosage", "brain=fc", "seeds=0,1,2", "trainer.max_epochs=3"])
    assert cfg.genomics == ["kmer", "dosage"] and cfg.brain == ["fc"] and cfg.seeds == [0, 1, 2]
    assert cfg.overrides == ["trainer.max_epochs=3"] and len(cfg.cells()) == 6
