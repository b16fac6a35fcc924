"""Frozen-feature cache: the outputs of encoders that do not train, computed once per subject and reused by every run.

An encoder with no trainable weight (a frozen one, `freeze: true`, or a fixed baseline: k-mer spectrum, dosages,
correlation FC) that is not waiting to be fitted on data (`fitted` False: tangent FC, site-pooled Caduceus) gives the
same features for a subject in every epoch and every run. With the cache on for its tower (`feature_cache.enabled`,
configs/train.yaml), a pre-pass before the first loader (AlignmentDataModule.setup) computes the features of every
subject not yet stored, with a DataLoader of `data.num_workers` workers over the transform and a tqdm bar, and stores
them; then training, validation, test, the test-stage evaluation and fusion.export read them (the batch carries the
(B, d) features, fusion.model.Tower.precomputed skips the encoder) and only the heads train.

    cache = FrozenFeatureCache(root, {"brain": (encoder, settings)}, batch_size=128, num_workers=2)
    tables = cache.prepare(cohort, {"brain": brain_transform})   # {"brain": FeatureTable}; cache.stats: hits, misses
    tables["brain"](fmri_path, train=True, rng=rng) -> (d,) features  (a drop-in for the transform in PairedDataset)

The store is genomics.embedding_cache.EmbeddingCache (one store for the project: the Caduceus sequence-embedding cache
uses it too, in the same folder, `feature_cache.dir` = `${paths.cache_dir}/embeddings`): one folder per encoder
identity, shards of (key, (d,) float32) rows, atomic writes, safe with concurrent writers (compare cells, DDP ranks,
two runs), resumable (a shard every `flush_rows` subjects), unreadable or partial shards ignored (recomputed).

Keys, so the same inputs hit and any change misses:
  folder = model_identity(encoder, **settings): SHA-256 of the encoder's class, weights and buffers (read at
           prepare time, so after a checkpoint is loaded: fusion.export computes with the exported weights), its HF
           config if any, and settings = the modality, the resolved encoder and transform configs (without
           IGNORED_SETTINGS, which do not change outputs) and the cohort-level inputs: SHA-256 of the modality's cohort
           files (genomics: vcf, genotypes with their PLINK companions, reference, regions; brain: atlas,
           atlas_coords) and the regions / parcel labels in use.
  row    = content_key(...): brain: per run of the subject, the SHA-256 of its fMRI file, confounds TSV and mask and
           its TR; genomics: the subject id (the sample in the hashed genotype files; a change anywhere in the VCF
           therefore recomputes every subject: the file is the unit).
Features are computed at float32 (no autocast), in eval mode, from the deterministic evaluation view (train=False).

Random training windows. A brain transform with a window (BrainLM, SwiFT, BrainMT: one random window per training
item, evaluation averages n_eval_windows fixed ones) has no single feature per subject in training. `enabled: auto`
(the default) caches a tower only where training sees what evaluation sees, so results equal the uncached path:
genomics transforms (one view; they take no train flag) and brain transforms with `window: null` (the whole scan,
FC's default). `enabled: true` caches every eligible tower: training then uses the evaluation view (the average of the
fixed windows), i.e. no window augmentation; that is the trade for a run whose epochs cost only the heads.
`enabled: false` turns it off. Cost: hashing every subject's files once per run (sequential reads; ~1 s/GB).
Under DDP each rank runs the pre-pass (ranks may compute some subjects twice; the store keeps one).
Library code: no Lightning, no Hydra.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from brain.scans import scan_for
from genomics.checkpoints import sha256_file
from genomics.embedding_cache import EmbeddingCache, content_key, model_identity

log = logging.getLogger(__name__)

MODES = ("auto", True, False)  # feature_cache.enabled
MODALITIES = ("genomics", "brain")
# encoder/transform config keys that do not change the features (where things are stored, how work is chunked, which
# kernel runs; the weights themselves are hashed, so the checkpoint path is not needed either)
IGNORED_SETTINGS = {"cache_dir", "chunk_size", "ssm_backend", "checkpoint"}
COHORT_FILES = {"genomics": ("vcf", "genotypes", "reference", "regions"), "brain": ("atlas", "atlas_coords")}
_PLINK_COMPANIONS = {".pgen": (".pvar", ".pvar.zst", ".psam"), ".bed": (".bim", ".fam")}


def eligible(encoder: nn.Module) -> bool:
    """No trainable weight and not waiting to be fitted on the training split (fusion.encoders: `fitted`)."""
    if any(p.requires_grad for p in encoder.parameters()):
        return False
    fitted = getattr(encoder, "fitted", None)
    return fitted is None or bool(fitted)


def same_view_in_training(modality: str, transform) -> bool:
    """Whether the transform's training items equal its evaluation items (so caching them changes nothing)."""
    if modality == "genomics":
        return True  # genomics transforms take no train flag
    return getattr(transform, "window", 0) is None  # brain: window None = the whole scan in both


def cached_modalities(enabled, towers: Mapping[str, tuple[nn.Module, object]]) -> list[str]:
    """The modalities whose towers read cached features: {modality: (encoder, transform)} under `enabled`."""
    if enabled not in MODES:
        raise ValueError(f"feature_cache.enabled is {enabled!r}: one of auto, true, false")
    if enabled is False:
        return []
    return [
        m
        for m, (encoder, transform) in towers.items()
        if eligible(encoder) and (enabled is True or same_view_in_training(m, transform))
    ]


_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, for this process (compare cells hash once)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (memoised per process by path, size and modification time)."""
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        _HASHES[memo] = sha256_file(path)
    return _HASHES[memo]


def file_digests(name: str, path: str | Path) -> dict[str, str]:
    """{name: digest} of a file, plus its PLINK companions' ({name + ".pvar": ...}) when it is a .pgen / .bed."""
    out = {name: file_digest(path)}
    for suffix in _PLINK_COMPANIONS.get(Path(path).suffix, ()):
        companion = Path(path).with_suffix(suffix)
        if companion.exists():
            out[name + suffix] = file_digest(companion)
    return out


def cohort_settings(cohort, modality: str) -> dict:
    """The cohort-level inputs of a modality's features: file contents and the regions / labels in use."""
    files = {}
    for name in COHORT_FILES[modality]:
        path = cohort.files.get(name)
        if path is not None:
            files |= file_digests(name, path)
    if modality == "genomics":
        used = [f"{r.contig}:{r.start}-{r.end}" for r in cohort.regions]
    else:
        used = [int(v) for v in np.asarray(cohort.labels).tolist()]
    return {"files": files, "used": used}


def clean_settings(config: Mapping | None) -> dict:
    """A resolved config dict without IGNORED_SETTINGS (recursively)."""
    if not isinstance(config, Mapping):
        return config
    return {k: clean_settings(v) for k, v in config.items() if k not in IGNORED_SETTINGS}


def subject_key(modality: str, cohort, subject_id: str, fmri: str) -> str:
    """A subject's row key (module docstring)."""
    if modality == "genomics":
        return content_key("genomics-subject", subject_id)
    parts: list[str] = ["brain-subject"]
    for run in scan_for(cohort.scans, fmri).runs:
        parts += [file_digest(run.path), *(file_digest(p) if p else "" for p in (run.confounds, run.mask))]
        parts.append(repr(run.t_r))
    return content_key(*parts)


class FeatureTable:
    """Stored features served in place of a transform: table(subject_id) (genomics) or table(fmri_path, train=,
    rng=) (brain) -> (d,) float32. `train`/`rng` are accepted and ignored (one view)."""

    def __init__(self, names: list[str], values: Tensor):
        self.row = {n: i for i, n in enumerate(names)}
        self.values = values  # (N, d)

    def __call__(self, name, train: bool = False, rng=None) -> Tensor:
        return self.values[self.row[str(name)]]


class _Inputs(Dataset):
    """The evaluation-view inputs of the subjects to compute: item i -> (i, transform output)."""

    def __init__(self, modality: str, transform: Callable, args: list[str]):
        self.modality, self.transform, self.args = modality, transform, args

    def __len__(self) -> int:
        return len(self.args)

    def __getitem__(self, i: int):
        if self.modality == "genomics":
            return i, self.transform(self.args[i])
        return i, self.transform(self.args[i], train=False, rng=None)


def _collate_inputs(collate: Callable, items: list) -> tuple[Tensor, object]:
    """_Inputs items (i, input) -> (indices (b,), collate(inputs)): the transform's own batching (brain.windows)."""
    return torch.tensor([i for i, _ in items]), collate([x for _, x in items])


def _to(data, device):
    if isinstance(data, Tensor):
        return data.to(device)
    if isinstance(data, Mapping):
        return {k: _to(v, device) for k, v in data.items()}
    return data


class FrozenFeatureCache:
    """Per modality, an encoder and the settings of its identity; computes and serves the subjects' features."""

    def __init__(
        self,
        root: str | Path,  # the store's folder (feature_cache.dir): one subfolder per encoder identity
        towers: Mapping[str, tuple[nn.Module, dict]],  # modality -> (encoder, settings: resolved configs, cohort)
        batch_size: int = 128,  # subjects per encoder call in the pre-pass
        num_workers: int = 0,  # pre-pass DataLoader workers (the transforms run there)
        flush_rows: int = 256,  # store a shard after this many computed subjects (a killed pre-pass resumes)
        progress: bool = True,  # a tqdm bar per modality with subjects to compute
    ):
        self.root, self.towers = Path(root), dict(towers)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.flush_rows, self.progress = int(flush_rows), progress
        self.stats: dict[str, dict] = {}  # modality -> subjects, cached, computed, seconds (of the last prepare)

    def prepare(self, cohort, transforms: Mapping[str, Callable], device=None) -> dict[str, FeatureTable]:
        """Every cohort subject's features per cached modality: read from the store, the missing ones computed (on
        `device`, default the encoder's) and stored. -> {modality: FeatureTable}."""
        tables = {}
        for modality, (encoder, settings) in self.towers.items():
            start = time.perf_counter()
            tables[modality] = self._prepare_one(modality, encoder, settings, cohort, transforms[modality], device)
            self.stats[modality]["seconds"] = round(time.perf_counter() - start, 3)
            log.info("feature cache (%s): %s", modality, self.stats[modality])
        return tables

    def _prepare_one(self, modality, encoder, settings, cohort, transform, device) -> FeatureTable:
        subjects = cohort.subjects
        sids, fmris = subjects["subject_id"].astype(str).tolist(), subjects["fmri"].astype(str).tolist()
        names = sids if modality == "genomics" else fmris
        store = EmbeddingCache.under(self.root, model_identity(encoder, modality=modality, **settings))
        keys = [subject_key(modality, cohort, s, f) for s, f in zip(sids, fmris)]
        found = store.get_many(keys)
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in found}.values())
        self.stats[modality] = {"subjects": len(keys), "cached": len(keys) - len(todo), "computed": 0}
        if todo:
            found |= self._compute(modality, encoder, transform, store, [(keys[i], names[i]) for i in todo], device)
        values = torch.stack([found[k] for k in keys]) if keys else torch.zeros(0, encoder.output_dim)
        return FeatureTable(names, values)

    def _compute(self, modality, encoder, transform, store, items, device) -> dict[str, Tensor]:
        params = next(iter(encoder.parameters()), None)
        home = params.device if params is not None else torch.device("cpu")
        device = torch.device(device) if device is not None else home
        collate = getattr(transform, "collate", None)  # e.g. ParcelTimeSeries: whole scans of different lengths
        loader = DataLoader(
            _Inputs(modality, transform, [name for _, name in items]),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=None if collate is None else partial(_collate_inputs, collate),
            generator=torch.Generator(),  # its own: iterating must not draw from the run's random stream
        )
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"{modality} features (cache pre-pass)", unit="subject")
        out: dict[str, Tensor] = {}
        pending: dict[str, Tensor] = {}
        was_training = encoder.training
        encoder.to(device).eval()
        try:
            for idx, x in loader:
                with torch.no_grad():
                    z = encoder(_to(x, device)).detach().float().cpu()  # (b, d)
                for i, v in zip(idx.tolist(), z):
                    pending[items[i][0]] = out[items[i][0]] = v.clone()
                self.stats[modality]["computed"] += len(idx)
                if bar is not None:
                    bar.update(len(idx))
                if len(pending) >= self.flush_rows:
                    store.put_many(pending)
                    pending = {}
        finally:
            if pending:
                store.put_many(pending)  # also on an interrupt: what was computed is kept
            if bar is not None:
                bar.close()
            encoder.to(home).train(was_training)
        return out


def identity_settings(modality: str, encoder_config: Mapping, transform_config: Mapping, cohort) -> dict:
    """The settings of a tower's store identity (module docstring), from resolved config dicts and the cohort."""
    return {
        "encoder": clean_settings(encoder_config),
        "transform": clean_settings(transform_config),
        "cohort": cohort_settings(cohort, modality),
    }
