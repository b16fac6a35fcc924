"""A content-addressed disk cache of pooled sequence embeddings of a frozen model: a cohort costs O(unique sequences).

    model_id = model_identity(backbone, pooling="strand_mean", window=1536)        # weights + config + settings
    cache = EmbeddingCache.under("cache/", model_id)                                  # cache/<model_id[:16]>/
    emb = cache.embed(ids, fn, chunk_size=16)          # ids (N, L) -> (N, D); fn runs only on rows not yet stored
    cache.get_many([key, ...]) -> {key: (D,) tensor}    cache.put_many({key: (D,) tensor})    key = sequence_key(row)

Keys. `model_identity(model, **settings)`: SHA-256 over the model's class name, its state dict (every name, dtype,
shape and the raw bytes of every tensor), its config (`config.to_dict()` without bookkeeping fields that do not change
outputs: ssm_backend, transformers_version, architectures, _name_or_path, dtype, ...) and the settings (JSON, sorted;
pooling choices go here). `sequence_key(ids)`: BLAKE2b-128 of the row's token ids as little-endian int64, 32 hex
digits; the length is part of the bytes, padding is part of the sequence. `content_key(*parts)`: the same digest over
any byte/str parts, each length-prefixed (so ("ab", "c") and ("a", "bc") differ): the keys of other content stored in
the same format (fusion.feature_cache: a subject's frozen-encoder features keyed by its input files' content).

Layout of a cache folder (one model identity):
    meta.json                          {"format", "version", "model_id", "dim", "dtype": "float32"}; created once,
                                       atomically and only if absent (os.link of a complete temp file); a folder
                                       whose meta disagrees with the model identity or width raises CacheMismatchError
    shards/<ns>-<pid>-<rand>.safetensors   one per put_many: "keys" uint8 (n, 16), "values" float32 (n, D), header
                                       metadata {model_id, dim}; written to shards/.<name>.tmp, fsynced, os.replace'd
The index (key -> shard, row) lives in memory and is rebuilt from the shard files (at open, and again when a lookup
misses), so no file is ever shared between writers. Readers list only complete `*.safetensors` names: temp files (a
writer killed mid-write) are ignored, and removed once older than an hour; a shard that cannot be read or belongs to
another model is warned about and ignored (its sequences are embedded again). Concurrent writers may store the same
key twice (the first shard in name order serves it); the union of their shards is one valid cache. `embed` stores its
results every `flush_rows` sequences or `flush_s` seconds, so a killed run resumes where its last shard ended; at
each such flush it also picks up other writers' new shards and skips the sequences they stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FORMAT, VERSION = "genobrain-embedding-cache", 1
KEY_BYTES = 16
STALE_TEMP_S = 3600.0  # temp files older than this are a dead writer's and are removed at open
# config fields that do not change a model's outputs (runtime switches, bookkeeping set by save/load)
_CONFIG_IGNORED = {
    "ssm_backend", "transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "return_dict",
    "output_hidden_states", "output_attentions", "use_cache", "id2label", "label2id", "problem_type", "auto_map",
    "_attn_implementation_autoset", "_commit_hash", "chunk_size_feed_forward", "is_encoder_decoder",
}  # fmt: skip


class CacheMismatchError(ValueError):
    """A cache folder whose meta.json names another model identity, width or format."""


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_identity(model: nn.Module, **settings) -> str:
    """Hex SHA-256 of the model's weights (state dict contents), config and the given settings (e.g. pooling)."""
    h = hashlib.sha256(f"{FORMAT}/{VERSION}\n{type(model).__qualname__}\n".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(_tensor_bytes(tensor))
    config = getattr(model, "config", None)
    cfg = config.to_dict() if hasattr(config, "to_dict") else None
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k not in _CONFIG_IGNORED}
    h.update(json.dumps({"config": cfg, "settings": settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _rows(ids: Tensor | np.ndarray) -> np.ndarray:
    a = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if a.ndim != 2:
        raise ValueError(f"expected token ids of shape (N, L), got {a.shape}")
    return np.ascontiguousarray(a, dtype="<i8")


def sequence_key(ids: Tensor | np.ndarray) -> str:
    """Key of one sequence (L,) of token ids: BLAKE2b-128 of its int64 little-endian bytes, 32 hex digits."""
    return sequence_keys(_rows(np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids).reshape(1, -1)))[0]


def sequence_keys(ids: Tensor | np.ndarray) -> list[str]:
    """Keys of the rows of ids (N, L)."""
    return [hashlib.blake2b(row.tobytes(), digest_size=KEY_BYTES).hexdigest() for row in _rows(ids)]


def content_key(*parts: bytes | str) -> str:
    """Key of any content: BLAKE2b-128 over the parts (str as UTF-8), each preceded by its length; 32 hex digits."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def _key_bytes(key: str) -> bytes:
    try:
        raw = bytes.fromhex(key)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"cache keys are {2 * KEY_BYTES} hex digits (sequence_key), got {key!r}")
    return raw


def _write_atomic(path: Path, data: bytes, replace: bool = True) -> bool:
    """Write data to a temp file next to `path`, fsync, then os.replace (or, with replace=False, link it in only if
    `path` is absent: returns False when it existed). The directory is fsynced after the rename."""
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class EmbeddingCache:
    """Pooled embeddings (D,) of one frozen model, keyed by sequence_key, stored in shard files under `root`."""

    def __init__(self, root: str | Path, model_id: str, dim: int | None = None):
        self.root, self.model_id = Path(root), str(model_id)
        self.shard_dir = self.root / "shards"
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.dim: int | None = None
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (shard number, row)
        self._shards: list[Path] = []
        self._seen: set[str] = set()
        self.stats = {"unique": 0, "cached": 0, "embedded": 0}  # of the last embed call
        meta = self._read_meta()
        self._has_meta = meta is not None
        if meta is not None:
            self.dim = int(meta["dim"])
        if dim is not None:
            self._ensure_meta(int(dim))
        self._remove_stale_temp()
        self.refresh()

    @classmethod
    def under(cls, parent: str | Path, model_id: str, dim: int | None = None) -> EmbeddingCache:
        """The cache of `model_id` in parent/<first 16 hex digits of model_id>."""
        return cls(Path(parent) / model_id[:16], model_id, dim)

    # ---- meta ---------------------------------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def _read_meta(self) -> dict | None:
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as err:
            raise CacheMismatchError(f"{self.meta_path}: unreadable cache meta ({err})") from err
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise CacheMismatchError(f"{self.meta_path}: not a {FORMAT} v{VERSION} folder: {meta}")
        if meta.get("model_id") != self.model_id:
            raise CacheMismatchError(
                f"{self.root} holds embeddings of model {meta.get('model_id')}, not {self.model_id}: use another "
                "folder for another model (EmbeddingCache.under(parent, model_id) picks one per model)"
            )
        return meta

    def _ensure_meta(self, dim: int) -> None:
        if not self._has_meta:
            meta = {"format": FORMAT, "version": VERSION, "model_id": self.model_id, "dim": dim, "dtype": "float32"}
            _write_atomic(self.meta_path, json.dumps(meta, indent=1).encode(), replace=False)
            self.dim = int(self._read_meta()["dim"])  # ours, or the one another writer created first
            self._has_meta = True
        if dim != self.dim:
            raise CacheMismatchError(f"{self.root} holds {self.dim}-wide embeddings, got width {dim}")

    def _remove_stale_temp(self) -> None:
        now = time.time()
        for tmp in [*self.shard_dir.glob(".*.tmp"), *self.root.glob(".*.tmp")]:
            try:
                if now - tmp.stat().st_mtime > STALE_TEMP_S:
                    tmp.unlink()
            except OSError:
                pass

    # ---- index --------------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Index shard files written since the last refresh (by any process); returns how many were added."""
        added = 0
        for path in sorted(self.shard_dir.glob("[!.]*.safetensors")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            keys = self._read_shard_keys(path)
            if keys is None:
                continue
            number = len(self._shards)
            self._shards.append(path)
            for row, raw in enumerate(keys):
                self._index.setdefault(raw, (number, row))
            added += 1
        return added

    def _read_shard_keys(self, path: Path) -> list[bytes] | None:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                keys = f.get_tensor("keys")
                n_values, dim = f.get_slice("values").get_shape()
        except Exception as err:  # a corrupt file (e.g. copied in half): its sequences are embedded again
            warnings.warn(f"embedding cache: ignoring unreadable shard {path} ({err})", stacklevel=3)
            return None
        if meta.get("model_id") != self.model_id or (self.dim is not None and dim != self.dim) or n_values != len(keys):
            warnings.warn(f"embedding cache: ignoring shard {path} of another model or width", stacklevel=3)
            return None
        if self.dim is None:
            self.dim = int(dim)
        return [bytes(row) for row in keys.numpy()]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return _key_bytes(key) in self._index

    # ---- get / put ----------------------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, Tensor]:
        """{key: (D,) float32 CPU tensor} for the stored keys (written by any process); absent keys are left out."""
        keys = list(dict.fromkeys(keys))
        raw = {k: _key_bytes(k) for k in keys}
        if any(r not in self._index for r in raw.values()):
            self.refresh()
        by_shard: dict[int, list[tuple[str, int]]] = {}
        for k, r in raw.items():
            if r in self._index:
                number, row = self._index[r]
                by_shard.setdefault(number, []).append((k, row))
        out: dict[str, Tensor] = {}
        for number, items in by_shard.items():
            values = self._load_values(self._shards[number])
            for k, row in items:
                out[k] = values[row].clone()
        return out

    def _load_values(self, path: Path) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("values")

    def put_many(self, items: Mapping[str, Tensor]) -> Path | None:
        """Store {key: (D,) tensor} as one new shard (keys already indexed are skipped); returns its path, or None."""
        new = {k: v for k, v in items.items() if _key_bytes(k) not in self._index}
        if not new:
            return None
        values = torch.stack([torch.as_tensor(v).detach().float().cpu().reshape(-1) for v in new.values()])  # (n, D)
        self._ensure_meta(values.shape[1])
        keys = torch.from_numpy(np.frombuffer(b"".join(_key_bytes(k) for k in new), dtype=np.uint8).copy())
        from safetensors.torch import save

        data = save(
            {"keys": keys.reshape(-1, KEY_BYTES), "values": values.contiguous()},
            metadata={"model_id": self.model_id, "dim": str(values.shape[1])},
        )
        path = self.shard_dir / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        _write_atomic(path, data)
        self._seen.add(path.name)
        number = len(self._shards)
        self._shards.append(path)
        for row, k in enumerate(new):
            self._index.setdefault(_key_bytes(k), (number, row))
        return path

    # ---- embed --------------------------------------------------------------------------------------------------
    def embed(
        self,
        ids: Tensor | np.ndarray,  # (N, L) token ids
        fn: Callable[[Tensor], Tensor],  # (n, L) ids -> (n, D) pooled embeddings (called under torch.no_grad)
        chunk_size: int = 16,  # sequences per fn call
        progress=True,  # True: a tqdm bar over unique sequences; False: none; a tqdm bar: updated per row of ids
        flush_rows: int = 1024,  # store a shard after this many new sequences ...
        flush_s: float = 60.0,  # ... or this many seconds since the last one
        desc: str = "embedding sequences",
    ) -> Tensor:
        """(N, D) float32 embeddings of the rows of ids: stored ones are read, each missing unique row is embedded
        once with fn, `chunk_size` rows at a time, and stored. The result is on ids' device (CPU for numpy input)."""
        ids_t = ids if isinstance(ids, Tensor) else torch.from_numpy(np.asarray(ids))
        keys = sequence_keys(ids_t)
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        found = self.get_many(first)
        missing = [k for k in first if k not in found]
        self.stats = {"unique": len(first), "cached": len(first) - len(missing), "embedded": 0}
        own_bar, bar, mult = progress is True, None, Counter(keys)
        if own_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(first), initial=len(first) - len(missing), desc=desc, unit="seq")
        elif progress is not False and progress is not None:
            bar = progress
            bar.update(sum(mult[k] for k in found))
        pending: dict[str, Tensor] = {}
        last, pos = time.monotonic(), 0
        try:
            while pos < len(missing):
                chunk = missing[pos : pos + chunk_size]
                pos += len(chunk)
                with torch.no_grad():
                    out = fn(ids_t[[first[k] for k in chunk]])
                out = out.detach().float().cpu()
                if out.ndim != 2 or out.shape[0] != len(chunk) or (self.dim is not None and out.shape[1] != self.dim):
                    raise ValueError(f"fn returned {tuple(out.shape)} for {len(chunk)} sequences (width {self.dim})")
                for k, v in zip(chunk, out):
                    pending[k] = found[k] = v
                self.stats["embedded"] += len(chunk)
                if bar is not None:
                    bar.update(len(chunk) if own_bar else sum(mult[k] for k in chunk))
                if len(pending) >= flush_rows or time.monotonic() - last >= flush_s:
                    self.put_many(pending)
                    pending, last = {}, time.monotonic()
                    if self.refresh():  # another writer stored some of the rest meanwhile: skip those
                        rest = [k for k in missing[pos:] if _key_bytes(k) not in self._index]
                        if bar is not None:
                            skipped = [k for k in missing[pos:] if _key_bytes(k) in self._index]
                            bar.update(len(skipped) if own_bar else sum(mult[k] for k in skipped))
                        missing = missing[:pos] + rest
        finally:
            if pending:
                self.put_many(pending)  # also on an interrupt: what was computed is kept
            if own_bar:
                bar.close()
        late = [k for k in first if k not in found]  # stored by another writer during this call
        found.update(self.get_many(late))
        self.stats["cached"] += len(late)
        if not keys:
            return torch.zeros(0, self.dim or 0, device=ids_t.device)
        return torch.stack([found[k] for k in keys]).to(ids_t.device)  # (N, D)

    def keys(self) -> Sequence[str]:
        """Every stored key (after a refresh)."""
        self.refresh()
        return [r.hex() for r in self._index]
