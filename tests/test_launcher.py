"""hydra/launcher=slurm (configs/hydra/launcher/slurm.yaml, hydra-submitit-launcher) composes with trainer=ddp and sizes
the SLURM job from the trainer: one task and one GPU per device, one SLURM node per Lightning node."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")


def composed(overrides: list[str]):
    from fusion.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_follows_the_ddp_trainer():
    cfg = composed(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm
    assert launcher["submitit_folder"].endswith(".submitit/%j")  # the plugin's fields are kept under ours


def test_the_plugins_own_launcher_composes_with_ddp():
    cfg = composed(["hydra/launcher=submitit_slurm", "trainer=ddp", "hydra.launcher.partition=gpu"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["tasks_per_node"] == 1  # the plugin's default: the slurm option is what sizes it for DDP
