"""OpenAI CLIP helpers shared by the CLIP-based adapters (MotionCLIP, MDM, T2M-GPT, MoMask).

- ``clip_module_for``: the ``clip`` module the upstream code uses;
- ``clip_budget``: a CLIP text path's token budget (textbudget.py), counted with CLIP's own BPE;
- ``decode_ids``: CLIP token ids of one row back to text, and ``canonical``: the form used to match
  decoded text to known labels (CLIP lowercases and spaces out punctuation: ``T-Pose`` comes back as
  ``t - pose``);
- ``make_proxy``: an object of (a subclass of) the CLIP model's own class sharing the real model's
  tensors, whose ``encode_text`` asks the adapter (MotionCLIP and T2M-GPT install it).
"""
from __future__ import annotations

import copy
import functools
import re
import sys

from ..errors import ActionGPTError
from .textbudget import TextBudget

SOT, EOT = 49406, 49407  # OpenAI CLIP's <|startoftext|> and <|endoftext|>
CLIP_BUDGET = 75  # CLIP's 77-token context less SOT and EOT
_proxy_classes: dict = {}
_WORD = re.compile(r"[^\W_]+")


def clip_module_for(model):
    """The ``clip`` module the model's code uses (its own ``clip`` or its module global), else ``import clip``."""
    for owner in (model, sys.modules.get(type(model).__module__)):
        clip = getattr(owner, "clip", None)
        if clip is not None and hasattr(clip, "tokenize"):
            return clip
    try:
        import clip
    except Exception as exc:  # noqa: BLE001 - clip's import pulls torchvision/PIL and may fail in many ways
        raise ActionGPTError(f"this adapter needs OpenAI CLIP's `clip` package (pip install clip-anytorch): {exc}") from None
    return clip


@functools.lru_cache(maxsize=None)
def clip_tokenizer(clip):
    return clip.simple_tokenizer.SimpleTokenizer()


def clip_budget(cfg, clip, tokens: int = CLIP_BUDGET) -> TextBudget:
    """The text budget of a CLIP text path: ``tokens`` BPE tokens between SOT and EOT."""
    return TextBudget(cfg, tokens, lambda text: len(clip_tokenizer(clip).encode(text)), "clip")


def decode_ids(clip, ids) -> str:
    """CLIP ids of one row -> lowercased, whitespace-normalised text between SOT and EOT."""
    ids = [int(i) for i in ids]
    start = ids.index(SOT) + 1 if SOT in ids else 0
    end = ids.index(EOT, start) if EOT in ids[start:] else len(ids)
    return " ".join(clip_tokenizer(clip).decode(ids[start:end]).split())


def canonical(text: str) -> str:
    """Lowercase words of letters and digits only: 'T-Pose', 't - pose' and 'T pose!' all give 't pose'."""
    return " ".join(_WORD.findall(text.lower()))


# -- the proxy ----------------------------------------------------------------------------------
def _encode_text(self, text):
    adapter, real = self.__dict__["_actiongpt_adapter"], self.__dict__["_actiongpt_real"]
    if not adapter.installed:  # a proxy kept after uninstall (e.g. one that clip.load handed out)
        return real.encode_text(text)
    return adapter.ag.eager(adapter.encode_text, text, real)


def _reduce_ex(self, protocol):
    # Pickled (spawned workers): the real CLIP and the adapter, so the copy keeps ActionGPT.
    return make_proxy, (self.__dict__["_actiongpt_real"], self.__dict__["_actiongpt_adapter"])


def _deepcopy(self, memo):
    # Deep-copied: the real CLIP, as a plain copy.
    return copy.deepcopy(self.__dict__["_actiongpt_real"], memo)


def make_proxy(real, adapter):
    """A proxy of the CLIP model ``real``: same parameter/buffer/submodule tables (identical
    ``state_dict``, ``.to()``/``.half()`` act on both), ``encode_text`` answered by ``adapter``."""
    cls = type(real)
    if cls not in _proxy_classes:
        _proxy_classes[cls] = type(f"ActionGPT{cls.__name__}", (cls,), {
            "encode_text": _encode_text, "__reduce_ex__": _reduce_ex, "__deepcopy__": _deepcopy,
            "__module__": __name__,
        })
    proxy = object.__new__(_proxy_classes[cls])
    proxy.__dict__.update(real.__dict__)
    proxy.__dict__["_actiongpt_adapter"] = adapter
    proxy.__dict__["_actiongpt_real"] = real
    return proxy
