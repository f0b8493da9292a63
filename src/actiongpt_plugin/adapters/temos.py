"""TEMOS (Mathux/TEMOS): instance-level ``get_last_hidden_state`` (a built-in adapter plugin).

TEMOS text encoders derive from ``temos.model.textencoder.distilbert.DistilbertEncoderBase``,
whose ``get_last_hidden_state(texts, return_mask=False)`` turns ``list[str]`` into
``[bs, T, H]`` (+ bool mask) for the trainable projection and transformer. The adapter declares an
instance attribute of that name on ``model.textencoder``: it embeds the n*k descriptions with the
original method in one call and aggregates them to ``[n, T', H]`` + bool mask. No parameter is
added, ``state_dict`` keys stay the same, and loading a checkpoint before or after install works.
"""
from __future__ import annotations

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import Adapter, InstanceAttribute, defining_class, unpatched

METHOD = "get_last_hidden_state"


class TemosAdapter(Adapter):
    name = "temos"
    granularity = "tokens"
    package = "temos"  # the upstream package the DistilbertEncoderBase must come from

    @classmethod
    def base_class(cls, obj):
        return defining_class(type(obj), "DistilbertEncoderBase", METHOD, cls.package)

    @classmethod
    def encoder_of(cls, model):
        """The DistilbertEncoderBase instance: the model's ``textencoder``, or the model itself."""
        for candidate in (model, getattr(model, "textencoder", None)):
            if candidate is not None and cls.base_class(candidate) is not None:
                return candidate
        return None

    @classmethod
    def matches(cls, model) -> bool:
        return cls.encoder_of(model) is not None

    def bind(self):
        self.encoder = self.encoder_of(self.model)
        if self.encoder is None:
            raise ActionGPTError(f"{type(self.model).__name__} has no {self.package} DistilbertEncoderBase text encoder")
        self.cls = self.base_class(self.encoder)

    def declare(self):
        # A plain instance attribute: not a parameter, buffer or submodule.
        return [InstanceAttribute(self.encoder, METHOD)]

    @property
    def original(self):
        """The upstream function (the class attribute, or what an ActionGPT class patch replaced)."""
        return unpatched(self.cls.__dict__[METHOD])

    # The drop-in, for one encoder instance.
    def encode_for(self, encoder, texts, return_mask=False):
        def encode(descriptions):
            return self.original(encoder, descriptions, return_mask=True)

        features, mask = self.ag.embed_tokens(list(texts), encode, encoder.text_model, tokenizer_tag(encoder))
        return (features, mask) if return_mask else features

    def get_last_hidden_state(self, texts, return_mask=False):
        return self.encode_for(self.encoder, texts, return_mask)

    @property
    def text_encoder(self):
        return self.get_last_hidden_state

    def embedding_source(self):
        encoder = self.encoder
        return (lambda d: self.original(encoder, d, return_mask=True)), encoder.text_model, tokenizer_tag(encoder)


def tokenizer_tag(encoder) -> str:
    tok = encoder.tokenizer
    return f"{type(tok).__name__}:{getattr(tok, 'name_or_path', '')}:{len(tok)}"


@hookimpl
def register_adapters(register):
    register(TemosAdapter)
