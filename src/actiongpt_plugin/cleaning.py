"""Description cleaning (a built-in plugin implementing `clean_descriptions`).

LLM output arrives with newlines (the release removed every "\\n"), list markers, chat preambles
and sentences cut off by max_tokens. What is left must be a usable description or nothing: a too-short
result is re-asked by the expander, never padded with the label.

Two answers are never stored: one cut off by max_tokens (finish reason "length") before its first
sentence ended, and one far longer than max_tokens allows (a server that ignores max_tokens).
"""
from __future__ import annotations

import re

from .hookspecs import hookimpl

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_PREAMBLE = re.compile(r"^(sure|certainly|of course|okay|ok)\b[^.:!]*[.:!]\s*", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_ROLE_PREFIX = re.compile(r"^(?:assistant|answer|description)\s*:\s*", re.IGNORECASE)
# A token is about 4 characters of English text; an answer longer than 10 per token of max_tokens
# cannot have respected the limit.
MAX_CHARS_PER_TOKEN = 10


def clean_text(text: str, min_words: int = 3, max_words: int | None = None, finish_reason: str | None = None,
               max_tokens: int | None = None) -> str | None:
    """One description, normalised; None when nothing usable is left.

    ``finish_reason`` "length": the text was cut off by ``max_tokens``; ``max_tokens`` also bounds how
    long a text can be at all.
    """
    if max_tokens and len(str(text or "")) > max_tokens * MAX_CHARS_PER_TOKEN:
        return None
    lines = [_LIST_MARKER.sub("", line) for line in str(text or "").splitlines()]
    text = " ".join(" ".join(lines).split())
    text = _ROLE_PREFIX.sub("", _PREAMBLE.sub("", text)).strip()
    if not text:
        return None
    if not re.search(r"[.!?][\"')\]]*$", text):
        # Cut off mid-sentence (max_tokens): keep the complete sentences before the cut.
        ends = list(_SENTENCE_END.finditer(text))
        if ends:
            text = text[: ends[-1].end()]
        elif finish_reason == "length":
            return None  # cut off inside its first sentence: a fragment, not a description
    words = text.split()
    if max_words and len(words) > max_words:
        ends = [m.end() for m in _SENTENCE_END.finditer(text) if len(text[: m.end()].split()) <= max_words]
        if not ends:
            return None
        text = text[: ends[-1]]
        words = text.split()
    if len(words) < min_words:
        return None
    return text


def clean_all(phrase: str, texts, min_words: int = 3, max_words: int | None = None, finish_reasons=None,
              max_tokens: int | None = None) -> list[str]:
    out = []
    reasons = list(finish_reasons or [])
    for i, raw in enumerate(texts):
        reason = reasons[i] if i < len(reasons) else None
        text = clean_text(raw, min_words, max_words, reason, max_tokens)
        # An echo of the label is the silent fallback the method exists to avoid.
        if text is not None and text.rstrip(".!? ").lower() != phrase.strip().lower():
            out.append(text)
    return out


@hookimpl(trylast=True)
def clean_descriptions(phrase, texts, config, finish_reasons):
    from .plugins import get_registry

    template = get_registry().template(config.template)  # the expander resolves "auto" first
    return clean_all(phrase, texts, config.expand.min_words, template.max_words, finish_reasons,
                     config.sampling.max_tokens)


@hookimpl(trylast=True)
def select_descriptions(phrase, candidates, k, config):
    return list(candidates[:k])
