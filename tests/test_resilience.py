"""Training that survives being killed: atomic checkpoint writes, a NaN loss stops the run and keeps the last good
checkpoint, and a run SIGKILLed mid-epoch then resumed from last.ckpt ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.app.resilience import RNG_KEY, AtomicCheckpointIO, ExactResume, NonFiniteLossGuard
from fusion.errors import TrainingDivergedError
from fusion.train import train

TESTS = Path(__file__).resolve().parent


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def interrupted(obj, fh):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


@pytest.mark.slow
def test_a_process_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, path)
    script = (
        "import os, signal, torch\n"
        "from fusion.app.resilience import AtomicCheckpointIO\n"
        "def dying(obj, fh):\n"
        "    fh.write(b'x' * 1000); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying\n"
        f"AtomicCheckpointIO().save_checkpoint({{'w': torch.zeros(3)}}, {str(path)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_every_run_gets_the_guards_and_checkpoints_carry_resume_state(tmp_path, demo_cache, train_config):
    _, objs = train(train_config(tmp_path, demo_cache, ["trainer.max_epochs=1", "test=false"]))
    trainer = objs["trainer"]
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert {NonFiniteLossGuard, ExactResume} <= {type(c) for c in trainer.callbacks}
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt[RNG_KEY]) >= {"torch", "numpy", "python"}
    assert ckpt["AlignmentDataModule"]["train_batches_done"] == 2  # a whole epoch: a resume starts the next


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, demo_cache, train_config, monkeypatch
):
    from fusion.app.module import AlignmentModule

    real = AlignmentModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 3 else loss

    monkeypatch.setattr(AlignmentModule, "training_step", poisoned)
    cfg = train_config(tmp_path, demo_cache, ["trainer.max_epochs=3", "test=false"])
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at global step 3 \(epoch 1, batch 1\)") as err:
        train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in str(err.value)
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 2  # the end of epoch 0; nothing was saved after the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not [p for p in last.parent.iterdir() if ".tmp-" in p.name]


def child(cwd: Path, cache: Path, tiny_demo: list[str], run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """A real `python -m fusion.train` process: 3 epochs of 2 steps, a checkpoint after every step, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "GENOBRAIN_ROOT"}
    env |= {"GENOBRAIN_CACHE": str(cache), "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [
        *tiny_demo, "trainer.max_epochs=3", "+callbacks.model_checkpoint.every_n_train_steps=1", "logger=csv",
        "+trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra,
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "fusion.train", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def dump(path: Path) -> list[str]:
    return ["+callbacks.dump._target_=fault_hooks.DumpMetrics", f"+callbacks.dump.path={path}"]


KILLS = {  # where the child dies -> (hook arguments, global step and datamodule position of the last.ckpt it leaves)
    "mid-epoch": (["+callbacks.kill._target_=fault_hooks.KillAtStep", "+callbacks.kill.step=4"], 3, (1, 1)),
    "in-validation": (["+callbacks.kill._target_=fault_hooks.KillInValidation", "+callbacks.kill.epoch=1"], 4, (1, 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(KILLS))
def test_killed_and_resumed_ends_bit_identical(tmp_path, demo_cache, tiny_demo, where):
    straight = child(tmp_path, demo_cache, tiny_demo, tmp_path / "A", *dump(tmp_path / "a.json"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    kill, step, (epoch, done) = KILLS[where]
    killed = child(tmp_path, demo_cache, tiny_demo, tmp_path / "B", *kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "B" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == step and ckpt["AlignmentDataModule"] == {"epoch": epoch, "train_batches_done": done}

    resumed = child(tmp_path, demo_cache, tiny_demo, tmp_path / "B", f"ckpt_path={last}", *dump(tmp_path / "b.json"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    test_a = {k: v for k, v in a["metrics"].items() if k.startswith("test/")}
    test_b = {k: v for k, v in b["metrics"].items() if k.startswith("test/")}
    assert test_a and test_a == test_b and a["global_step"] == b["global_step"] == 6
    end_a, end_b = (torch.load(tmp_path / x / "checkpoints" / "last.ckpt", weights_only=True) for x in "AB")
    assert end_a["global_step"] == end_b["global_step"] == 6
    for key, value in end_a["state_dict"].items():
        assert torch.equal(value, end_b["state_dict"][key]), key  # bit-identical weights
    opt_a, opt_b = end_a["optimizer_states"][0]["state"], end_b["optimizer_states"][0]["state"]
    for i in opt_a:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][key], opt_b[i][key]), (i, key)
