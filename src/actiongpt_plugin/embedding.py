"""Embedding caches and the tensor plumbing shared by adapters.

The text models are frozen, so the aggregated features of a phrase depend only on the text model's
weights, the adapter's tokenisation, the aggregator and the descriptions: they are computed once
and reused, in memory (``EmbeddingCache``) and, with ``embedding.persist``, on disk
(``PersistentEmbeddings``: every process and later runs reuse them). Keys carry a content
fingerprint of the text model, so reloading weights (``load_state_dict``) or moving the model never
serves stale features.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import weakref
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import ActionGPTError

_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tensors(module):
    return list(module.named_parameters()) + list(module.named_buffers())


def _version(t) -> int:
    try:
        return t._version  # bumped by every in-place change (load_state_dict copies in place)
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def model_fingerprint(module: torch.nn.Module) -> str:
    """Content identity of a module's weights.

    A cheap state (tensor ids, storage pointers, in-place version counters) is checked on every
    call; the content digest (class, shapes and a strided sample of every tensor) is recomputed
    only when that state changes.
    """
    tensors = _tensors(module)
    cheap = tuple((id(t), t.data_ptr(), _version(t), t.dtype, t.device) for _, t in tensors)
    memo = _fingerprints.get(module)
    if memo is not None and memo[0] == cheap:
        return memo[1]
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    with torch.no_grad():
        for name, t in tensors:
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            flat = t.detach().reshape(-1)
            if flat.numel():
                sample = flat[:: max(1, flat.numel() // 64)][:64]
                h.update(sample.float().cpu().numpy().tobytes())
    digest = h.hexdigest()[:24]
    _fingerprints[module] = (cheap, digest)
    return digest


def descriptions_key(descriptions) -> str:
    return hashlib.sha256("\x1f".join(descriptions).encode()).hexdigest()[:32]


class EmbeddingCache:
    """A size-bounded LRU of per-phrase aggregated features: key -> (features, mask or None)."""

    def __init__(self, max_entries: int = 8192, device=None):
        self.max_entries = max_entries
        self.device = torch.device(device) if device else None
        self._data: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._data)

    def clear(self):
        self._data.clear()

    def get(self, key):
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key, value):
        self._data[key] = tuple(None if t is None else self._keepable(t) for t in value)
        self._data.move_to_end(key)
        while self.max_entries > 0 and len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def _keepable(self, t):
        t = t.detach()
        if self.device is not None:
            t = t.to(self.device)
        if t.is_inference():
            # Made under torch.inference_mode (e.g. prepare() at eval time): a normal copy can
            # later be saved for backward by the trainable layers it feeds.
            with torch.inference_mode(False):
                t = t.clone()
        return t


def _key_text(key) -> str:
    return "\x1f".join(key)


def _tensor_row(t):
    """A tensor as (bytes, dtype name, JSON shape): lossless for every dtype (bfloat16 included)."""
    t = t.detach().to("cpu").contiguous()
    data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return data, str(t.dtype).removeprefix("torch."), json.dumps(list(t.shape))


def _tensor_of(data, dtype, shape, device):
    dtype, shape = getattr(torch, dtype), json.loads(shape)
    if not data:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).to(device)


_inherited_connections: list = []


class PersistentEmbeddings:
    """Aggregated features on disk: SQLite in WAL mode, safe for several processes (DDP ranks) at once.

    Keys are the in-memory cache's (text-model fingerprint, adapter, tag, aggregator, descriptions
    key); rows are written with INSERT OR IGNORE (the same key always holds the same features), so
    concurrent writers never conflict. Each process opens its own connection on first use.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser()
        self._conn = None
        self._pid = None
        self.hits = 0
        self.misses = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # a forked worker opens its own
            self._drop_inherited()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, features BLOB NOT NULL, "
                    "dtype TEXT NOT NULL, shape TEXT NOT NULL, mask BLOB, mask_shape TEXT)"
                )
            except (OSError, sqlite3.Error) as exc:
                raise ActionGPTError(f"cannot open the embedding cache {self.path}: {exc} "
                                     "(set embedding.persist_path, or embedding.persist=false)") from None
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def __len__(self):
        return self._db().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def get_many(self, keys, device=None) -> dict:
        """key -> (features, mask or None) for the keys on disk, as tensors on ``device``."""
        out = {}
        texts = {_key_text(k): k for k in keys}
        names = list(texts)
        for start in range(0, len(names), 500):  # SQLite's bound-parameter limit
            chunk = names[start : start + 500]
            rows = self._db().execute(
                f"SELECT key, features, dtype, shape, mask, mask_shape FROM embeddings WHERE key IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, features, dtype, shape, mask, mask_shape in rows:
                m = None if mask_shape is None else _tensor_of(mask, "bool", mask_shape, device)
                out[texts[key]] = (_tensor_of(features, dtype, shape, device), m)
        self.hits += len(out)
        self.misses += len(texts) - len(out)
        return out

    def put_many(self, items: dict) -> None:
        rows = []
        for key, (features, mask) in items.items():
            data, dtype, shape = _tensor_row(features)
            mask_data, _, mask_shape = _tensor_row(mask) if mask is not None else (None, None, None)
            rows.append((_key_text(key), data, dtype, shape, mask_data, mask_shape))
        if rows:
            db = self._db()
            with db:  # one transaction
                db.executemany("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)

    def _drop_inherited(self) -> None:
        # A connection inherited through fork is never closed in the child: closing it there could
        # checkpoint and delete the WAL file the parent is still using.
        if self._conn is not None and self._pid != os.getpid():
            _inherited_connections.append(self._conn)
            self._conn = None

    def close(self) -> None:
        self._drop_inherited()
        if self._conn is not None:
            self._conn.close()
        self._conn = None


def trim(features, mask):
    """Drop trailing positions no description reaches (batch padding) so results are batch-independent."""
    real = mask.nonzero()
    length = int(real[-1]) + 1 if len(real) else 1
    return features[:length], mask[:length]


def pad_tokens(items, device=None):
    """Per-phrase ([T_i, H], [T_i]) pairs -> features [n, T, H] (zeros beyond T_i) and bool mask [n, T]."""
    length = max(f.shape[0] for f, _ in items)
    first = items[0][0]
    device = device or first.device
    out = torch.zeros(len(items), length, first.shape[-1], dtype=first.dtype, device=device)
    mask = torch.zeros(len(items), length, dtype=torch.bool, device=device)
    for i, (f, m) in enumerate(items):
        out[i, : f.shape[0]] = f
        mask[i, : m.shape[0]] = m
    return out, mask


def stack_pooled(items, device=None):
    """Per-phrase [D] vectors -> [n, D] (cached ones may live on another device)."""
    device = device or items[0][0].device
    return torch.stack([f.to(device) for f, _ in items])
