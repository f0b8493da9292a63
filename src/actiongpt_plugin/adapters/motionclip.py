"""MotionCLIP (GuyTevet/MotionCLIP): a ``clip_model`` proxy (a built-in adapter plugin).

MotionCLIP has no text-encoder class: its code calls ``model.clip_model.encode_text(clip.tokenize(
texts))`` (training target and inference input). ``install`` swaps ``model.clip_model`` for a proxy:
an instance of a subclass of the CLIP model's own class that shares the real model's parameter,
buffer and submodule tables (so ``state_dict`` keys and tensors are the very same, and nothing is
added) and overrides ``encode_text``: it decodes the CLIP ids between SOT and EOT back to text,
maps that text to the label given to ``expand``/``prepare`` when there is one, and returns the
aggregate of the k descriptions, each re-tokenised with ``truncate=True`` and encoded by the real
CLIP (descriptions over 75 tokens follow ``embedding.long_text``, see textbudget.py): ``[n, D]``
like the original. ``uninstall`` puts the real model back. The CLIP helpers here (token decoding,
the proxy, the token budget) serve the T2M-GPT adapter too.
"""
from __future__ import annotations

import functools
import sys

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import Adapter
from .textbudget import TextBudget

SOT, EOT = 49406, 49407  # OpenAI CLIP's <|startoftext|> and <|endoftext|>
CLIP_BUDGET = 75  # CLIP's 77-token context less SOT and EOT
TAG = "clip-tokenize-truncate"
_proxy_classes: dict = {}


def clip_module_for(model):
    """The ``clip`` module the model's code uses (its own ``clip`` or its module global), else ``import clip``."""
    for owner in (model, sys.modules.get(type(model).__module__)):
        clip = getattr(owner, "clip", None)
        if clip is not None and hasattr(clip, "tokenize"):
            return clip
    try:
        import clip
    except Exception as exc:  # noqa: BLE001 - clip's import pulls torchvision/PIL and may fail in many ways
        raise ActionGPTError(f"the MotionCLIP adapter needs OpenAI CLIP's `clip` package (pip install clip-anytorch): {exc}") from None
    return clip


@functools.lru_cache(maxsize=None)
def clip_tokenizer(clip):
    return clip.simple_tokenizer.SimpleTokenizer()


def clip_budget(cfg, clip, tokens: int = CLIP_BUDGET) -> TextBudget:
    """The text budget of a CLIP text path: ``tokens`` BPE tokens between SOT and EOT."""
    return TextBudget(cfg, tokens, lambda text: len(clip_tokenizer(clip).encode(text)), "clip")


def _encode_text(self, text):
    adapter, real = self.__dict__["_actiongpt_adapter"], self.__dict__["_actiongpt_real"]
    if not adapter.installed:  # a proxy kept after uninstall (e.g. one that clip.load handed out)
        return real.encode_text(text)
    return adapter.encode_text(text, real)


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
        if self.real is not None and "_actiongpt_adapter" in vars(self.real):
            raise ActionGPTError("model.clip_model is already an ActionGPT proxy; uninstall first")
        self.clip = clip_module_for(model)
        self.text_budget = clip_budget(ag.cfg, self.clip)
        self.tag = f"{TAG}:{self.text_budget.tag}"
        self.proxy = None
        self.aliases: dict[str, str] = {}  # decoded CLIP text -> label as given to expand/prepare

    @property
    def tokenizer(self):
        return clip_tokenizer(self.clip)

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
        phrases = []
        for row in text.tolist():
            decoded = self.text_of(row)
            phrases.append(self.aliases.get(decoded, decoded))
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
