"""Embedding cache and the tensor plumbing shared by adapters.

The text models are frozen, so the aggregated features of a phrase depend only on the text model's
weights, the adapter's tokenisation, the aggregator and the descriptions: they are computed once
and reused. Keys carry a content fingerprint of the text model, so reloading weights
(``load_state_dict``) or moving the model never serves stale features.
"""
from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict

import torch

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
