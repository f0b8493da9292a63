"""MotionCLIP (GuyTevet/MotionCLIP): a ``clip_model`` proxy (a built-in adapter plugin).

MotionCLIP has no text-encoder class: its code calls ``model.clip_model.encode_text(clip.tokenize(
texts))`` (training target and inference input). ``install`` swaps ``model.clip_model`` for a proxy:
an instance of a subclass of the CLIP model's own class that shares the real model's parameter,
buffer and submodule tables (so ``state_dict`` keys and tensors are the very same, and nothing is
added) and overrides ``encode_text``: it decodes the CLIP ids between SOT and EOT back to text,
maps that text to the label given to ``expand``/``prepare`` when there is one, and returns the
aggregate of the k descriptions, each re-tokenised with ``truncate=True`` and encoded by the real
CLIP: ``[n, D]`` like the original. ``uninstall`` puts the real model back.
"""
from __future__ import annotations

import sys

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import Adapter

SOT, EOT = 49406, 49407  # OpenAI CLIP's <|startoftext|> and <|endoftext|>
TAG = "clip-tokenize-truncate"
_proxy_classes: dict = {}


def clip_module_for(model):
    """The ``clip`` module MotionCLIP's model code uses (its module global), else ``import clip``."""
    clip = getattr(sys.modules.get(type(model).__module__), "clip", None)
    if clip is not None and hasattr(clip, "tokenize"):
        return clip
    try:
        import clip
    except Exception as exc:  # noqa: BLE001 - clip's import pulls torchvision/PIL and may fail in many ways
        raise ActionGPTError(f"the MotionCLIP adapter needs OpenAI CLIP's `clip` package (pip install clip-anytorch): {exc}") from None
    return clip


def _encode_text(self, text):
    return self.__dict__["_actiongpt_adapter"].encode_text(text)


def _itself(module):
    return module


def _reduce_ex(self, protocol):
    # Pickling or deep-copying the model stores the real CLIP model, never the proxy.
    return _itself, (self.__dict__["_actiongpt_real"],)


def make_proxy(real, adapter):
    cls = type(real)
    if cls not in _proxy_classes:
        _proxy_classes[cls] = type(f"ActionGPT{cls.__name__}", (cls,),
                                   {"encode_text": _encode_text, "__reduce_ex__": _reduce_ex, "__module__": __name__})
    proxy = object.__new__(_proxy_classes[cls])
    # Same _parameters/_buffers/_modules dicts: identical state_dict, .to()/.half() act on both.
    proxy.__dict__.update(real.__dict__)
    proxy.__dict__["_actiongpt_adapter"] = adapter
    proxy.__dict__["_actiongpt_real"] = real
    return proxy


class MotionClipAdapter(Adapter):
    name = "motionclip"
    granularity = "pooled"

    @classmethod
    def matches(cls, model) -> bool:
        clip_model = getattr(model, "clip_model", None)
        return type(model).__name__ == "MOTIONCLIP" and callable(getattr(clip_model, "encode_text", None))

    def __init__(self, model, ag):
        super().__init__(model, ag)
        self.real = model.clip_model
        if "_actiongpt_adapter" in vars(self.real):
            raise ActionGPTError("model.clip_model is already an ActionGPT proxy; uninstall first")
        self.clip = clip_module_for(model)
        self._tokenizer = None
        self.proxy = None
        self.aliases: dict[str, str] = {}  # decoded CLIP text -> label as given to expand/prepare

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.clip.simple_tokenizer.SimpleTokenizer()
        return self._tokenizer

    def text_of(self, ids) -> str:
        """CLIP ids of one row -> lowercased, whitespace-normalised text between SOT and EOT."""
        ids = [int(i) for i in ids]
        start = ids.index(SOT) + 1 if SOT in ids else 0
        end = ids.index(EOT, start) if EOT in ids[start:] else len(ids)
        return " ".join(self.tokenizer.decode(ids[start:end]).split())

    def register_phrases(self, phrases) -> None:
        tokens = self.clip.tokenize(list(phrases), truncate=True)
        for phrase, row in zip(phrases, tokens.tolist()):
            self.aliases[self.text_of(row)] = phrase

    def encode(self, descriptions):
        """The real CLIP on descriptions, cut to 77 tokens as the release does."""
        device = next(self.real.parameters()).device
        return self.real.encode_text(self.clip.tokenize(descriptions, truncate=True).to(device))

    def encode_text(self, text):
        """The drop-in for ``clip_model.encode_text(tokens)``: [n, 77] ids -> [n, D] features.

        Empty rows are padding, not actions (MotionCLIP pads its text grids with ''): they keep
        CLIP's own features.
        """
        phrases = []
        for row in text.tolist():
            decoded = self.text_of(row)
            phrases.append(self.aliases.get(decoded, decoded))
        keep = [i for i, p in enumerate(phrases) if p]
        if len(keep) == len(phrases):
            return self.ag.embed_pooled(phrases, self.encode, self.real, TAG)
        empty = [i for i, p in enumerate(phrases) if not p]
        base = self.real.encode_text(text[empty])
        out = base.new_zeros(len(phrases), base.shape[1])
        out[empty] = base
        if keep:
            out[keep] = self.ag.embed_pooled([phrases[i] for i in keep], self.encode, self.real, TAG).to(base.dtype)
        return out

    @property
    def text_encoder(self):
        return self.encode_text

    def embedding_source(self):
        return self.encode, self.real, TAG

    def install(self):
        self.proxy = make_proxy(self.real, self)
        self.model.clip_model = self.proxy

    def uninstall(self):
        self.real.training = self.proxy.training  # eval()/train() calls made meanwhile
        self.model.clip_model = self.real
        self.proxy = None


@hookimpl
def register_adapters(register):
    register(MotionClipAdapter)
