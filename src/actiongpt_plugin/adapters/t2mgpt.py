"""T2M-GPT (Mael-zys/T2M-GPT): a driver and a ``clip.load`` patch (a built-in adapter plugin).

T2M-GPT has no text-encoder object: its scripts load CLIP into a module global
(``clip_model, _ = clip.load("ViT-B/32", jit=False)``) and feed
``clip_model.encode_text(clip.tokenize(texts, truncate=True)).float()`` to
``Text2Motion_Transformer(idxs, clip_feature)`` / ``.sample(clip_feature)``. Two ways in, both
declared replacements:

- ``T2MGPT(transformer, clip_model)``: a driver doing those steps for Python code
  (``clip_features``, ``forward``, ``sample``); ``ActionGPT(T2MGPT(...))`` swaps its ``clip_model``
  for the MotionCLIP adapter's proxy (same parameters, ``encode_text`` decodes the tokens back to
  the label and returns the aggregate of its descriptions).
- ``clip.load`` (a module function): while installed it returns such a proxy of every CLIP it
  loads, so T2M-GPT's own scripts (``train_t2m_trans.py``, ``GPT_eval_multi.py``) run unchanged
  under ActionGPT. ``uninstall`` restores ``clip.load``; proxies handed out meanwhile fall back to
  plain CLIP. A model pickled into another process patches ``clip.load`` there again.
"""
from __future__ import annotations

import importlib

from ..lazy import torch

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import ModuleAttribute, Proxy, unpatched
from .clip import clip_module_for, make_proxy
from .motionclip import MotionClipAdapter


class T2MGPT:
    """T2M-GPT's text-to-motion steps around a ``Text2Motion_Transformer`` and a frozen CLIP.

    ``transformer`` and ``clip_model`` may be None (e.g. only to run T2M-GPT's scripts under the
    ``clip.load`` patch; the first CLIP they load is then adopted). ``clip``: the OpenAI CLIP module
    (default: ``import clip``). Copies and pickles refer to the module by name.
    """

    def __init__(self, transformer=None, clip_model=None, clip=None):
        self.transformer = transformer
        self.clip_model = clip_model
        self.clip = clip if clip is not None else clip_module_for(self)

    def __getstate__(self):
        return {**self.__dict__, "clip": self.clip.__name__}  # a module cannot be copied or pickled

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.clip = importlib.import_module(state["clip"])

    def clip_features(self, texts):
        """[n, D] float: what train_t2m_trans.py / utils/eval_trans.py compute for a batch of texts."""
        if self.clip_model is None:
            raise ActionGPTError("this T2MGPT driver has no CLIP model yet: pass clip_model=")
        device = next(self.clip_model.parameters()).device
        tokens = self.clip.tokenize(list(texts), truncate=True).to(device)
        return self.clip_model.encode_text(tokens).float()

    def forward(self, idxs, texts):
        """Training: logits of ``transformer(idxs, clip_features(texts))``."""
        return self.transformer(idxs, self.clip_features(texts))

    __call__ = forward

    def sample(self, texts, if_categorial=False):
        """Motion-token indices per text, one text at a time as T2M-GPT's evaluation does."""
        features = self.clip_features(texts)
        return [self.transformer.sample(features[i : i + 1], if_categorial) for i in range(features.shape[0])]


class T2MGPTAdapter(MotionClipAdapter):
    name = "t2mgpt"

    @classmethod
    def matches(cls, model) -> bool:
        return isinstance(model, T2MGPT)

    def declare(self):
        clip_model = [Proxy(self.model, "clip_model")] if self.model.clip_model is not None else []
        return clip_model + [ModuleAttribute(self.clip, "load", handler="load")]

    def embedding_source(self):
        if self.real is None:
            raise ActionGPTError("no CLIP model to embed with yet: give T2MGPT a clip_model, or prepare after "
                                 "clip.load")
        return super().embedding_source()

    @property
    def text_encoder(self):
        if self.real is None:
            raise ActionGPTError("no CLIP model to embed with yet: give T2MGPT a clip_model")
        return self.encode_text

    def load(self, *args, **kwargs):
        """``clip.load`` while installed: the loaded CLIP comes back as a proxy."""
        real, preprocess = unpatched(self.clip.load)(*args, **kwargs)
        if isinstance(real, torch.jit.ScriptModule):
            raise ActionGPTError("ActionGPT needs CLIP loaded with jit=False (as T2M-GPT's scripts do)")
        if self.model.clip_model is None:  # adopt it: prepare() and the driver use it from now on
            self.model.clip_model = real
            adopted = Proxy(self.model, "clip_model")
            adopted.install(self)
            self.replacements.insert(0, adopted)
            return self.model.clip_model, preprocess
        return make_proxy(real, self), preprocess


@hookimpl
def register_adapters(register):
    register(T2MGPTAdapter)
