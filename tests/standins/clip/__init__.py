"""OpenAI CLIP stand-in: ``tokenize``, ``simple_tokenizer.SimpleTokenizer``, ``model.CLIP``, ``load``.

``tokenize(texts, context_length=77, truncate=False)`` returns int64 ``[n, 77]`` with the real BPE
ids (as clip-anytorch does; openai-clip returns int32); ``load`` returns a tiny random CLIP with
the real vocabulary size, frozen and in eval mode as MotionCLIP uses it.
"""
from functools import lru_cache

import torch

from . import model, simple_tokenizer
from .model import CLIP, build_tiny

__all__ = ["tokenize", "load", "CLIP", "build_tiny"]


@lru_cache()
def _tokenizer():
    return simple_tokenizer.SimpleTokenizer()


def tokenize(texts, context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    if isinstance(texts, str):
        texts = [texts]
    tok = _tokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot] + tok.encode(text) + [eot]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = eot
        result[i, : len(ids)] = torch.tensor(ids)
    return result


def load(name: str = "ViT-B/32", device="cpu", jit: bool = False, seed: int = 0):
    """A tiny random CLIP instead of the named weights (none can be downloaded here)."""
    clip_model = build_tiny(seed=seed).to(device).eval()
    return clip_model, None
