"""genomics.embedding_cache: model identity, content-addressed shards, embed() dedup, concurrency and kill-safety."""

import inspect
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from genomics.caduceus import Caduceus, CaduceusConfig
from genomics.embedding_cache import CacheMismatchError, EmbeddingCache, model_identity, sequence_key, sequence_keys

REPO = Path(__file__).resolve().parents[2]
TINY = dict(d_model=8, n_layer=2, ssm_backend="torch")

N_SEQ, LENGTH, DIM = 120, 24, 3


def make_ids():
    return torch.randint(7, 11, (N_SEQ, LENGTH), generator=torch.Generator().manual_seed(0))


def features(x):
    """An exact (integer-valued) embedding of ids (n, L) -> (n, DIM)."""
    w = (torch.arange(x.shape[1] * DIM).reshape(x.shape[1], DIM) % 5).float()
    return x.float() @ w


# the worker processes use the same sequences and embedding
COMMON = f"import torch\nN_SEQ, LENGTH, DIM = {N_SEQ}, {LENGTH}, {DIM}\n" + "".join(
    inspect.getsource(f) for f in (make_ids, features)
)

WORKER = (
    COMMON
    + """
import sys, time
from genomics.embedding_cache import EmbeddingCache
root, order, sleep, flush = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
ids = make_ids()
ids = ids.flip(0) if order == "reverse" else ids
cache = EmbeddingCache(root, "test-model")
def fn(x):
    time.sleep(sleep)
    return features(x)
out = cache.embed(ids, fn, chunk_size=4, flush_rows=flush, progress=False)
assert torch.equal(out, features(ids))
print("embedded", cache.stats["embedded"])
"""
)


def worker(root, order="forward", sleep=0.0, flush=4) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", WORKER, str(root), order, str(sleep), str(flush)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def counting(fn):
    rows = []

    def wrapped(x):
        rows.append(len(x))
        return fn(x)

    return wrapped, rows


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return Caduceus(CaduceusConfig(**(TINY | overrides))).eval()


def test_model_identity_tracks_weights_config_and_settings(tmp_path):
    a, b = tiny_model(), tiny_model()
    assert model_identity(a, window=16) == model_identity(b, window=16)  # same weights, two instances
    a.save_pretrained(tmp_path / "ckpt")
    loaded = Caduceus.from_pretrained(tmp_path / "ckpt", ssm_backend="cpu")  # backend and saved fields don't count
    assert model_identity(loaded, window=16) == model_identity(a, window=16)
    assert model_identity(a, window=16) != model_identity(a, window=32)  # pooling settings count
    with torch.no_grad():
        b.backbone.norm_f.weight[0] += 1e-3
    assert model_identity(b, window=16) != model_identity(a, window=16)  # any weight
    assert model_identity(tiny_model(fused_add_norm=False)) != model_identity(tiny_model())  # config


def test_keys_are_content_hashes():
    ids = make_ids()
    keys = sequence_keys(ids)
    assert keys[3] == sequence_key(ids[3]) == sequence_key(ids[3].numpy().astype("int32"))
    assert len(set(keys)) == N_SEQ and all(len(k) == 32 for k in keys)
    assert sequence_key(ids[3, 1:]) != keys[3]


def test_put_get_and_reopen(tmp_path):
    ids = make_ids()[:10]
    keys, vals = sequence_keys(ids), features(ids)
    cache = EmbeddingCache(tmp_path, "m")
    assert cache.get_many(keys) == {} and len(cache) == 0
    cache.put_many(dict(zip(keys[:6], vals[:6])))
    assert cache.put_many(dict(zip(keys[:2], vals[:2]))) is None  # nothing new: no shard
    again = EmbeddingCache(tmp_path, "m")  # a fresh reader rebuilds the index from the shards
    got = again.get_many(keys)
    assert sorted(got) == sorted(keys[:6]) and len(again) == 6 and again.dim == 3
    assert all(torch.equal(got[k], v) for k, v in zip(keys, vals) if k in got)
    with pytest.raises(ValueError, match="hex digits"):
        cache.get_many(["not-a-key"])


def test_embed_dedups_and_a_second_run_makes_no_call(tmp_path):
    ids = torch.cat([make_ids()[:10], make_ids()[:5]])  # 15 rows, 10 unique
    fn, rows = counting(features)
    out = EmbeddingCache(tmp_path, "m").embed(ids, fn, chunk_size=4, progress=False)
    assert torch.equal(out, features(ids)) and rows == [4, 4, 2]
    fn2, rows2 = counting(features)
    cache = EmbeddingCache(tmp_path, "m")
    assert torch.equal(cache.embed(ids, fn2, progress=False), out) and rows2 == []
    assert cache.stats == {"unique": 10, "cached": 10, "embedded": 0}
    fn3, rows3 = counting(features)
    more = make_ids()[:14]  # 4 new
    assert torch.equal(cache.embed(more, fn3, progress=False), features(more)) and sum(rows3) == 4


def test_embed_skips_what_another_writer_stored_meanwhile(tmp_path):
    ids = make_ids()[:16]
    other = EmbeddingCache(tmp_path, "m")
    calls = []

    def fn(x):  # while this call runs, "another process" stores rows 8..15
        if not calls:
            other.put_many(dict(zip(sequence_keys(ids[8:]), features(ids[8:]))))
        calls.append(len(x))
        return features(x)

    cache = EmbeddingCache(tmp_path, "m")
    assert torch.equal(cache.embed(ids, fn, chunk_size=4, flush_rows=4, progress=False), features(ids))
    assert calls == [4, 4] and cache.stats == {"unique": 16, "cached": 8, "embedded": 8}


def test_a_folder_of_another_model_or_width_is_an_error(tmp_path):
    ids = make_ids()[:4]
    EmbeddingCache(tmp_path, "m").embed(ids, features, progress=False)
    with pytest.raises(CacheMismatchError, match="another folder"):
        EmbeddingCache(tmp_path, "other")
    with pytest.raises(CacheMismatchError, match="3-wide"):
        EmbeddingCache(tmp_path, "m", dim=4)
    with pytest.raises(CacheMismatchError, match="3-wide"):
        EmbeddingCache(tmp_path, "m").put_many({sequence_key(make_ids()[9]): torch.zeros(5)})
    assert EmbeddingCache.under(tmp_path / "p", "ab" * 32).root == tmp_path / "p" / ("ab" * 8)


def test_truncated_temp_and_corrupt_shards_are_ignored_and_the_run_resumes(tmp_path):
    ids = make_ids()[:20]
    cache = EmbeddingCache(tmp_path, "m")
    cache.embed(ids[:8], features, progress=False)
    shard = next(cache.shard_dir.glob("*.safetensors"))
    data = shard.read_bytes()
    (cache.shard_dir / f".{shard.name}.999-deadbeef.tmp").write_bytes(data[: len(data) // 2])  # killed mid-write
    (cache.shard_dir / "99999999999999999999-1-corrupt.safetensors").write_bytes(data[:40])  # damaged after the fact
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = EmbeddingCache(tmp_path, "m")
    assert len(again) == 8 and any("unreadable shard" in str(w.message) for w in caught)
    fn, rows = counting(features)
    assert torch.equal(again.embed(ids, fn, progress=False), features(ids)) and sum(rows) == 12


def test_two_processes_filling_one_cache_end_with_one_valid_cache(tmp_path):
    procs = [worker(tmp_path, order, sleep=0.03, flush=4) for order in ("forward", "reverse")]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    embedded = [int(out.split()[-1]) for out, _ in results]  # each skips what the other stored meanwhile
    assert N_SEQ <= sum(embedded) <= 2 * N_SEQ
    cache = EmbeddingCache(tmp_path, "test-model")
    ids = make_ids()
    got = cache.get_many(sequence_keys(ids))
    assert len(cache) == N_SEQ and len(got) == N_SEQ
    assert torch.equal(torch.stack([got[k] for k in sequence_keys(ids)]), features(ids))
    assert not list(tmp_path.rglob("*.tmp"))
    fn, rows = counting(features)
    assert torch.equal(cache.embed(ids, fn, progress=False), features(ids)) and rows == []


def test_a_killed_writer_leaves_a_valid_resumable_cache(tmp_path):
    proc = worker(tmp_path, sleep=0.25, flush=4)  # one shard per chunk of 4, ~7.5 s in all
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "shards").glob("[!.]*.safetensors"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    cache = EmbeddingCache(tmp_path, "test-model")
    done = len(cache)
    assert 0 < done < N_SEQ and done % 4 == 0
    fn, rows = counting(features)
    ids = make_ids()
    assert torch.equal(cache.embed(ids, fn, progress=False), features(ids)) and sum(rows) == N_SEQ - done
