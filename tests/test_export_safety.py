"""Exports resume after a kill without redoing finished splits and never leave a file that looks complete but is not;
a run folder cannot make export or a resume run code (pickled checkpoints, foreign `_target_`s); manifest paths can
be confined to a root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from fusion.cohort import load_cohort
from fusion.errors import UnsafeConfigError
from fusion.export import export
from fusion.train import train
from genomics.errors import GenomicsInputError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_cache, train_config):
    """A one-epoch tiny-demo run; its last.ckpt (the run folder is two levels up)."""
    tmp = tmp_path_factory.mktemp("exportrun")
    _, objs = train(train_config(tmp, demo_cache, ["trainer.max_epochs=1", "test=false"]))
    return tmp / "run" / "checkpoints" / "last.ckpt", objs["datamodule"].split_sizes()



def fused(path: Path) -> np.ndarray:
    return np.stack(pq.read_table(path).to_pandas()["fused"].to_numpy())


@pytest.mark.slow
def test_export_killed_half_way_reruns_only_the_rest(trained, tmp_path, export_calls):
    ckpt, sizes = trained
    out = tmp_path / "export"
    script = (
        "import os, signal, fusion.export as ex\n"
        "real, calls = ex.embed_split, []\n"
        "def embed(model, loader):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # killed while embedding the second split\n"
        "    return real(model, loader)\n"
        "ex.embed_split = embed\n"
        f"ex.export({str(ckpt)!r}, out_dir={str(out)!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["complete"] is False and list(prov["splits"]) == ["train"]
    assert sorted(p.name for p in out.iterdir()) == ["provenance.json", "train.parquet"]  # nothing half-written
    assert pq.read_table(out / "train.parquet").num_rows == sizes["train"] == prov["splits"]["train"]["rows"]
    (out / ".val.parquet.tmp-12345").write_bytes(b"PAR1 half")  # as a kill during a write would leave
    mtime = (out / "train.parquet").stat().st_mtime_ns

    calls = export_calls  # the splits embedded from here on
    written = export(ckpt, out_dir=out)
    assert len(calls) == 2  # val and test only
    assert (out / "train.parquet").stat().st_mtime_ns == mtime and not list(out.glob(".*.tmp-*"))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["complete"] is True and list(prov["splits"]) == ["train", "val", "test"]
    fresh = export(ckpt, out_dir=tmp_path / "fresh")
    for split in ("train", "val", "test"):
        assert np.array_equal(fused(written[split]), fused(fresh[split]))
        assert pq.read_table(written[split]).num_rows == sizes[split]

    calls.clear()
    table = pq.read_table(out / "val.parquet").to_pandas().iloc[:1]
    table.to_parquet(out / "val.parquet")  # changed behind the export's back: its SHA-256 no longer matches
    export(ckpt, out_dir=out)
    assert len(calls) == 1 and pq.read_table(out / "val.parquet").num_rows == sizes["val"]


class Planted:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def copy_run(ckpt: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt.parent.parent / "config_resolved.yaml", run / "config_resolved.yaml")
    shutil.copy(ckpt, run / "checkpoints" / "last.ckpt")
    return run


@pytest.mark.slow
def test_a_pickle_that_runs_code_is_refused_as_a_checkpoint(trained, tmp_path, train_config, demo_cache):
    run = copy_run(trained[0], tmp_path)
    marker = tmp_path / "pwned"
    evil = run / "checkpoints" / "evil.ckpt"
    torch.save({"state_dict": Planted(marker)}, evil)
    with pytest.raises(GenomicsInputError, match="cannot be read as a weights-only checkpoint"):
        export(evil)
    with pytest.raises(GenomicsInputError, match="weights-only"):
        train(train_config(tmp_path / "resume", demo_cache, ["trainer.max_epochs=2", f"ckpt_path={evil}"]))
    proc = subprocess.run([sys.executable, "-m", "fusion.export", f"ckpt_path={evil}"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "weights-only" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "key, target",
    [("model._target_", "os.system"), ("genomics.encoder._target_", "builtins.eval"),
     ("data._target_", "fusionx.evil.Thing"), ("callbacks.model_checkpoint._target_", "subprocess.Popen")],
)  # fmt: skip
def test_saved_config_targets_outside_the_project_are_refused(trained, tmp_path, key, target):
    run = copy_run(trained[0], tmp_path)
    cfg = OmegaConf.load(run / "config_resolved.yaml")
    OmegaConf.update(cfg, key, target, force_add=True)
    OmegaConf.save(cfg, run / "config_resolved.yaml")
    with pytest.raises(UnsafeConfigError, match=rf"{key}='{target}'"):
        export(run / "checkpoints" / "last.ckpt")


def test_manifest_paths_are_confined_to_the_root(demo_cache, tmp_path, train_config):
    from fusion.app.cohort_source import resolve_cohort
    from fusion.cohort import CohortError

    cfg = train_config(tmp_path, demo_cache, [])
    resolve_cohort(cfg)
    root = tmp_path / "cohort"
    shutil.copytree(Path(cfg.data.manifest).parent, root)  # a private copy: links are planted in it
    files = {k: root / Path(cfg.data[k]).name for k in ("manifest", "vcf", "reference", "regions", "atlas",
                                                          "atlas_coords")}  # fmt: skip
    table = pd.read_csv(files["manifest"], dtype=str)
    outside = tmp_path / "outside.nii.gz"
    shutil.copy(root / table["fmri"][2], outside)
    os.symlink(outside, root / "fmri" / "link.nii.gz")
    table.loc[0, "fmri"] = "../../../../../../../../etc/passwd"
    table.loc[1, "fmri"] = str(outside)
    table.loc[2, "fmri"] = "fmri/link.nii.gz"  # inside by name, outside once the link is followed
    table.to_csv(root / "escape.csv", index=False)
    args = {**files, "manifest": root / "escape.csv"}
    cohort, report = load_cohort(**args, root=root)
    text = "\n".join(str(p) for p in report.errors)
    assert "'../../../../../../../../etc/passwd' resolves to /etc/passwd, outside data.root" in text
    assert f"resolves to {outside}, outside data.root={root.resolve()}" in text
    assert "'fmri/link.nii.gz' resolves to" in text and len(cohort.subjects) == len(table) - 3
    assert len(load_cohort(**args)[0].subjects) == len(table) - 1  # no root: only /etc/passwd fails (not NIfTI)
    with pytest.raises(CohortError, match="outside data.root"):
        load_cohort(**{**files, "vcf": outside}, root=root)
