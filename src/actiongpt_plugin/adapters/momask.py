"""MoMask (EricGuo5513/momask-codes): ``encode_text`` of its transformers (a built-in adapter plugin).

MoMask's ``MaskTransformer`` and ``ResidualTransformer`` each load their own frozen CLIP
(``self.clip_model``) and turn ``list[str]`` into ``[n, 512]`` float with
``encode_text(raw_text)`` (``clip.tokenize(raw_text, truncate=True)`` -> ``clip_model.encode_text``
-> ``.float()``), called by ``forward`` (training), ``generate`` and ``edit``. The adapter declares an
instance attribute ``encode_text`` on each transformer given (one, or a list/tuple such as
``[t2m_transformer, res_transformer]``: both then share descriptions and cache), which embeds the
descriptions with that transformer's original method and aggregates them; descriptions over CLIP's
75 tokens follow ``embedding.long_text``. No module or parameter is added, so MoMask's checkpoints
(saved without ``clip_model.*``, loaded with ``strict=False``) load both ways.
"""
from __future__ import annotations

import functools

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import Adapter, InstanceAttribute, defining_class
from .clip import clip_budget, clip_module_for

CLASSES = ("MaskTransformer", "ResidualTransformer")
PACKAGES = ("mask_transformer", "momask")  # upstream: models/mask_transformer/transformer.py
METHOD = "encode_text"


def momask_class(obj):
    for name in CLASSES:
        for package in PACKAGES:
            cls = defining_class(type(obj), name, METHOD, package)
            if cls is not None:
                return cls
    return None


class MoMaskAdapter(Adapter):
    name = "momask"
    granularity = "pooled"

    @staticmethod
    def transformers_of(model) -> list:
        """The MoMask transformers with a CLIP text path: ``model`` itself, or the items of a list/tuple."""
        items = list(model) if isinstance(model, (list, tuple)) else [model]
        ok = items and all(momask_class(t) is not None and getattr(t, "clip_model", None) is not None for t in items)
        return items if ok else []

    @classmethod
    def matches(cls, model) -> bool:
        return bool(cls.transformers_of(model))

    def bind(self):
        self.transformers = self.transformers_of(self.model)
        if not self.transformers:
            raise ActionGPTError(f"{type(self.model).__name__} is not a MoMask transformer with cond_mode 'text'")
        self.text_budget = clip_budget(self.ag.cfg, clip_module_for(self.transformers[0]))
        self.tag = f"momask-clip:{self.text_budget.tag}"

    def declare(self):
        return [InstanceAttribute(t, METHOD) for t in self.transformers]

    def encoder_of(self, transformer):
        """encode(descriptions) -> [N, D] with ``transformer``'s ORIGINAL encode_text."""
        original = momask_class(transformer).__dict__[METHOD].__get__(transformer)
        return lambda descriptions: self.text_budget.encode(descriptions, original)

    def encode_for(self, transformer, raw_text):
        """The drop-in for ``transformer.encode_text(raw_text)``: [n, D] float."""
        encode = self.encoder_of(transformer)
        return self.ag.embed_pooled(list(raw_text), encode, transformer.clip_model, self.tag).float()

    @property
    def text_encoder(self):
        return functools.partial(self.encode_for, self.transformers[0])

    def embedding_source(self):
        first = self.transformers[0]
        return self.encoder_of(first), first.clip_model, self.tag


@hookimpl
def register_adapters(register):
    register(MoMaskAdapter)
