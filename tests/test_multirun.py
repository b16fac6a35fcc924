"""The README's sweep, for real: `python -m fusion.train -m brain=fc,brainlm_mae_tiny` launches two jobs, each in its
own folder of the default sweep dir (logs/train/multiruns/<time>/<job>), which resolves before Hydra's runtime config
exists."""

from __future__ import annotations

import os
import subprocess
import sys

from omegaconf import OmegaConf


def test_a_two_job_multirun_writes_both_run_folders(tmp_path, demo_cache, tiny_demo):
    env = {k: v for k, v in os.environ.items() if k != "GENOBRAIN_ROOT"} | {"GENOBRAIN_CACHE": str(demo_cache)}
    overrides = [
        "brain=fc,brainlm_mae_tiny",
        *tiny_demo,
        "+trainer.fast_dev_run=true",
        "+trainer.enable_progress_bar=false",
    ]
    # the default hydra.sweep.dir (${paths.log_dir}/...) on purpose: overriding it would bypass what is tested; the
    # project root is the launch directory, tmp_path
    done = subprocess.run(
        [sys.executable, "-m", "fusion.train", "-m", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1 and (sweeps[0] / "multirun.yaml").is_file()
    targets = {}
    for job in ("0", "1"):
        run = sweeps[0] / job
        cfg = OmegaConf.load(run / "config_resolved.yaml")
        assert cfg.paths.output_dir == str(run) and cfg.paths.root_dir == str(tmp_path)
        assert cfg.paths.cache_dir == str(demo_cache) and (run / ".hydra" / "overrides.yaml").is_file()
        targets[job] = cfg.brain.encoder._target_
        assert "test retrieval on" in (run / "train.log").read_text()  # the job trained and tested
    assert targets == {"0": "brain.connectivity.FunctionalConnectivity", "1": "brain.models.BrainLMMAEEncoder"}
