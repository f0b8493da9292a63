"""Text budgets: how much of a description a model's text encoder reads, and what happens past it.

CLIP reads 77 tokens (75 between its start and end tokens) and MDM cuts its CLIP input to 20 tokens
on HumanML3D/KIT; LLM descriptions are often longer. ``embedding.long_text`` decides what happens to a
description over the budget (counted in the model's own tokenizer):

- ``split`` (default): it is cut at sentence ends (then at clause punctuation, then between words,
  for a sentence that alone is too long) into pieces packed greedily within the budget; each piece
  is encoded and the piece features are combined with a norm-preserving mean (a plain mean of spread
  CLIP vectors is shorter than they are, and frozen checkpoints expect CLIP's usual norm). Nothing is
  cut off, and a description within the budget is encoded exactly as with ``truncate``.
- ``trim`` (caption mode): only the first such piece is kept: the leading whole sentences that fit.
- ``truncate``: descriptions reach the text model unchanged and its tokenizer cuts them (the
  release's and upstream's behaviour; use it with the ``paper`` aggregator to reproduce the release).

``embedding.text_budget`` replaces the adapter's budget for ``split`` and ``trim`` (e.g. 20, to give
a 77-token model caption-length text).
"""
from __future__ import annotations

import re

from ..lazy import torch

from ..aggregators import norm_mean
from ..errors import ActionGPTError

MODES = ("split", "trim", "truncate")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


class TextBudget:
    """A model's text budget (``tokens`` counted by ``count``) and the ``embedding.long_text`` policy."""

    def __init__(self, cfg, tokens: int, count, tokenizer: str):
        mode, override = cfg.embedding.long_text, cfg.embedding.text_budget
        if mode not in MODES:
            choices = ", ".join(MODES)
            raise ActionGPTError(f"bad value {mode!r} for config key 'embedding.long_text'; valid choices: {choices}")
        if override is not None and override < 1:
            raise ActionGPTError("bad value for config key 'embedding.text_budget': must be at least 1")
        self.mode = mode
        self.tokens = override or tokens
        self.count = count  # text -> number of tokens the model's tokenizer makes of it (no special tokens)
        self.tokenizer = tokenizer

    @property
    def tag(self) -> str:
        """Part of the embedding cache key: everything that changes what the text model sees."""
        return "truncate" if self.mode == "truncate" else f"{self.mode}:{self.tokenizer}:{self.tokens}"

    def pieces(self, text: str) -> list[str]:
        """``text`` in consecutive pieces within the budget: whole sentences packed together; a
        sentence that alone is too long is cut at clause punctuation, then between words, and its
        parts are not mixed with other sentences."""
        if self.count(text) <= self.tokens:
            return [text]
        out, current = [], ""
        for sentence in _SENTENCE_END.split(text.strip()):
            if self.count(sentence) <= self.tokens:
                current = self._pack(out, current, sentence)
                continue
            out += [current] if current else []
            current = ""
            for clause in _CLAUSE_END.split(sentence):
                for unit in [clause] if self.count(clause) <= self.tokens else clause.split():
                    current = self._pack(out, current, unit)
            out += [current] if current else []
            current = ""
        return out + [current] if current else out

    def _pack(self, out: list, current: str, unit: str) -> str:
        """Append ``unit`` to the piece being built, or close that piece and start a new one."""
        joined = f"{current} {unit}" if current else unit
        if current and self.count(joined) > self.tokens:
            out.append(current)
            return unit
        return joined

    def fit(self, text: str) -> str:
        """The leading whole sentences of ``text`` within the budget (caption mode)."""
        return self.pieces(text)[0]

    def encode(self, descriptions, encode):
        """Pooled features [N, D] of ``descriptions`` by ``encode(list[str])``, under the policy."""
        if self.mode == "truncate":
            return encode(descriptions)
        pieces = [self.pieces(d) if self.mode == "split" else [self.fit(d)] for d in descriptions]
        flat = [p for group in pieces for p in group]
        features = encode(flat)
        if len(flat) == len(descriptions):
            return features
        rows, start = [], 0
        for group in pieces:
            part = features[start : start + len(group)]
            start += len(group)
            rows.append(part[0] if len(group) == 1 else norm_mean(part.float(), None, len(group))[0][0].to(part.dtype))
        return torch.stack(rows)
