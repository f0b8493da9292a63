"""MotionCLIP (GuyTevet/MotionCLIP): a ``clip_model`` proxy (a built-in adapter plugin).

MotionCLIP has no text-encoder class: its code calls ``model.clip_model.encode_text(clip.tokenize(
texts))`` (training target and inference input). The adapter declares a ``Proxy`` of
``model.clip_model``: an instance of a subclass of the CLIP model's own class that shares the real
model's parameter, buffer and submodule tables (so ``state_dict`` keys and tensors are the very
same, and nothing is added) and overrides ``encode_text``: it decodes the CLIP ids between SOT and
EOT back to text, maps that text to a known label (the labels given to ``expand``/``prepare``, else
the expander's known phrases, matched in canonical form: CLIP decodes ``T-Pose`` as ``t - pose``)
and returns the aggregate of the k descriptions, each re-tokenised with ``truncate=True`` and
encoded by the real CLIP (descriptions over 75 tokens follow ``embedding.long_text``, see
textbudget.py): ``[n, D]`` like the original. ``uninstall`` puts the real model back. The CLIP
helpers live in clip.py; the T2M-GPT adapter builds on this one.
"""
from __future__ import annotations

import functools

from ..hookspecs import hookimpl
from .base import Adapter, Proxy
from .clip import canonical, clip_budget, clip_module_for, clip_tokenizer, decode_ids, make_proxy

TAG = "clip-tokenize-truncate"


class MotionClipAdapter(Adapter):
    name = "motionclip"
    granularity = "pooled"
    portable = ("aliases",)

    @classmethod
    def matches(cls, model) -> bool:
        clip_model = getattr(model, "clip_model", None)
        return type(model).__name__ == "MOTIONCLIP" and callable(getattr(clip_model, "encode_text", None))

    def __init__(self, model, ag):
        self.aliases: dict[str, str] = {}  # canonical decoded CLIP text -> label as given to expand/prepare
        super().__init__(model, ag)

    def bind(self):
        self.clip = clip_module_for(self.model)
        self.text_budget = clip_budget(self.ag.cfg, self.clip)
        self.tag = f"{TAG}:{self.text_budget.tag}"
        self.known = None  # canonical form -> phrase, of the expander's known phrases (on first miss)
        self.unknown: set = set()

    def declare(self):
        return [Proxy(self.model, "clip_model")]

    @property
    def real(self):
        """The real CLIP model (``model.clip_model`` is a proxy while installed)."""
        clip_model = self.model.clip_model
        return None if clip_model is None else vars(clip_model).get("_actiongpt_real", clip_model)

    def make_proxy(self, real):
        return make_proxy(real, self)

    @property
    def tokenizer(self):
        return clip_tokenizer(self.clip)

    def text_of(self, ids) -> str:
        return decode_ids(self.clip, ids)

    def register_phrases(self, phrases) -> None:
        tokens = self.clip.tokenize(list(phrases), truncate=True)
        for phrase, row in zip(phrases, tokens.tolist()):
            self.aliases[canonical(self.text_of(row))] = phrase

    def label_for(self, decoded: str) -> str:
        """The known label behind CLIP-decoded text: a registered label, else one of the expander's
        known phrases (``known_phrases()``: a pack's phrases, the store's), else the text itself."""
        key = canonical(decoded)
        if not key:
            return decoded
        if key in self.aliases:
            return self.aliases[key]
        if key not in self.unknown:  # look again once per new text: the store may have grown
            self.unknown.add(key)
            known_phrases = getattr(self.ag.expander, "known_phrases", None)
            self.known = {canonical(p): p for p in known_phrases()} if known_phrases else {}
        return (self.known or {}).get(key, decoded)

    def encode(self, descriptions, real=None):
        """The real CLIP on descriptions (``truncate=True``, as the release), under ``embedding.long_text``."""
        real = self.real if real is None else real
        device = next(real.parameters()).device

        def run(texts):
            return real.encode_text(self.clip.tokenize(texts, truncate=True).to(device))

        return self.text_budget.encode(descriptions, run)

    def encode_text(self, text, real=None):
        """The drop-in for ``clip_model.encode_text(tokens)``: [n, 77] ids -> [n, D] features.

        Empty rows are padding, not actions (MotionCLIP pads its text grids with ''): they keep
        CLIP's own features. ``real``: the CLIP model to use (a proxy passes its own).
        """
        real = self.real if real is None else real
        encode = functools.partial(self.encode, real=real)
        phrases = [self.label_for(self.text_of(row)) for row in text.tolist()]
        keep = [i for i, p in enumerate(phrases) if p]
        if len(keep) == len(phrases):
            return self.ag.embed_pooled(phrases, encode, real, self.tag)
        empty = [i for i, p in enumerate(phrases) if not p]
        base = real.encode_text(text[empty])
        out = base.new_zeros(len(phrases), base.shape[1])
        out[empty] = base
        if keep:
            out[keep] = self.ag.embed_pooled([phrases[i] for i in keep], encode, real, self.tag).to(base.dtype)
        return out

    @property
    def text_encoder(self):
        return self.encode_text

    def embedding_source(self):
        return self.encode, self.real, self.tag


@hookimpl
def register_adapters(register):
    register(MotionClipAdapter)
