"""Aggregators: combine the k description embeddings of each phrase (a built-in plugin).

An aggregator is a callable ``(features, mask, k) -> (features, mask)``:
- token-level models (TEMOS, TEACH): ``features`` [n*k, T, H] float, ``mask`` [n*k, T] bool
  (True = real token); return [n, T', H] and a bool mask [n, T'];
- pooled models (MotionCLIP): ``features`` [n*k, D], ``mask`` None; return [n, D] and None.
Rows i*k .. i*k+k-1 are the descriptions of phrase i. Register one with the
``register_aggregators`` hook; the ``aggregate_embeddings`` hook calls it (built-in trylast, so a
plugin can override any aggregator's computation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .lazy import torch

from .errors import ActionGPTError
from .hookspecs import hookimpl


@dataclass(frozen=True)
class Aggregator:
    name: str
    fn: Callable
    description: str = ""

    def __call__(self, features, mask, k):
        if k < 1 or features.shape[0] % k:
            raise ActionGPTError(f"aggregator {self.name!r}: {features.shape[0]} rows is not a multiple of k={k}")
        return self.fn(features, mask, k)


def _groups(features, mask, k):
    n = features.shape[0] // k
    f = features.reshape(n, k, *features.shape[1:])
    m = None if mask is None else mask.reshape(n, k, mask.shape[-1]).bool()
    return f, m


def paper(features, mask, k):
    """The release: plain mean over k; for tokens position-wise, pad states included, union mask.

    Unlike the release the union mask stays boolean (its int32 mask broke padding on torch 1.x
    and raises on torch 2.x).
    """
    f, m = _groups(features, mask, k)
    if m is None:
        return f.mean(1), None
    return f.mean(1), m.any(1)


def masked_mean(features, mask, k):
    """At each position, the mean over only the descriptions that have a real token there."""
    f, m = _groups(features, mask, k)
    if m is None:
        return f.mean(1), None
    w = m.unsqueeze(-1).to(f.dtype)
    return (f * w).sum(1) / w.sum(1).clamp_min(1), m.any(1)


def pooled_mean(features, mask, k):
    """One vector per phrase: each description mean-pooled over its real tokens, then averaged.

    Token-level models get it as a one-token sequence [n, 1, H].
    """
    f, m = _groups(features, mask, k)
    if m is None:
        return f.mean(1), None
    w = m.unsqueeze(-1).to(f.dtype)
    per_description = (f * w).sum(2) / w.sum(2).clamp_min(1)  # [n, k, H]
    out = per_description.mean(1, keepdim=True)
    return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


def norm_mean(features, mask, k, eps=1e-8):
    """The mean rescaled to the mean norm of its parts (a plain mean of spread vectors shrinks)."""
    f, m = _groups(features, mask, k)
    if m is None:
        mean = f.mean(1)
        target = f.norm(dim=-1).mean(1, keepdim=True)
        return mean * target / mean.norm(dim=-1, keepdim=True).clamp_min(eps), None
    w = m.unsqueeze(-1).to(f.dtype)
    count = w.sum(1).clamp_min(1)
    mean = (f * w).sum(1) / count
    target = (f.norm(dim=-1, keepdim=True) * w).sum(1) / count
    return mean * target / mean.norm(dim=-1, keepdim=True).clamp_min(eps), m.any(1)


def concat(features, mask, k):
    """The k token sequences one after another, real tokens only, then padded to the longest."""
    if mask is None:
        raise ActionGPTError("aggregator 'concat' needs token-level features; this model's text encoder is pooled")
    f, m = _groups(features, mask, k)
    rows = [torch.cat([f[i, j][m[i, j]] for j in range(k)]) for i in range(f.shape[0])]
    length = max(r.shape[0] for r in rows)
    out = f.new_zeros(len(rows), length, f.shape[-1])
    out_mask = torch.zeros(len(rows), length, dtype=torch.bool, device=f.device)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        out_mask[i, : r.shape[0]] = True
    return out, out_mask


BUILTIN_AGGREGATORS = (
    Aggregator("paper", paper, "the release: position-wise mean (tokens) / plain mean (pooled)"),
    Aggregator("masked-mean", masked_mean, "position-wise mean over real tokens only"),
    Aggregator("pooled-mean", pooled_mean, "mean of mean-pooled descriptions (one token for token-level models)"),
    Aggregator("norm-mean", norm_mean, "mean rescaled to the mean norm of its parts"),
    Aggregator("concat", concat, "token sequences concatenated (token-level models only)"),
)


@hookimpl
def register_aggregators(register):
    for aggregator in BUILTIN_AGGREGATORS:
        register(aggregator.name, aggregator)


@hookimpl(trylast=True)
def aggregate_embeddings(aggregator, features, mask, k):
    return aggregator(features, mask, k)
