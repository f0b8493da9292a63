"""Local causal language models through transformers: a model directory or a GGUF file.

Prompts are batched with LEFT padding (a decoder-only model continues from the right end of each
row, so padding must come first) and the k samples of each prompt come from the same generate()
call through ``num_return_sequences``. torch and transformers are imported on first use because
this module is loaded as a plugin on every CLI start.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from dataclasses import dataclass
from typing import Optional

from ..config import default_cache_dir
from ..options import option
from ..errors import ActionGPTError, FatalBackendError
from ..hookspecs import hookimpl
from .base import Backend, Completion, Request, SamplingParams

log = logging.getLogger("actiongpt")  # the CLI shows its warnings on stderr


def import_torch():
    """Import torch, first asking OpenMP to sleep rather than spin between operations.

    On small VMs spinning OpenMP workers make generation stall at random (55 ms -> 250-580 ms per
    token). libgomp reads OMP_WAIT_POLICY once, when torch is first imported: if the host program
    imported torch earlier, this has no effect and the user should export the variable themselves.
    A value the user already set is kept.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    return torch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dequantised_copy_dir(gguf: Path) -> Path:
    """Where the safetensors copy of a GGUF file lives; a changed file gets a new copy."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return default_cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _save_copy(tokenizer, lm, dest: Path) -> None:
    """Save a GGUF-loaded model as safetensors (reloads in ~2 s instead of 20-30 s)."""
    # transformers refuses to save a model it believes is quantised; the weights are already
    # dequantised floats, so dropping the quantiser bookkeeping is all that is needed.
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        lm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, dest)  # atomic: a reader sees no copy or a complete one
    except Exception as exc:  # the model is loaded either way; only the next start is slower
        if not dest.is_dir():
            log.warning("could not cache a dequantised copy of the GGUF model in %s: %s", dest, _first_line(exc))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _seeded(torch, seed, device):
    """Seed sampling without disturbing the caller's global random state."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class TransformersOptions:
    """any local causal language model"""

    model: Optional[str] = option(None, "a local causal LM directory or a .gguf file")
    batch_size: int = option(8, "prompts per generate() call (left padding)", low=1, high=4096)
    device: str = option("cpu", "torch device")
    dtype: str = option("float32", "torch dtype")


class TransformersBackend(Backend):
    """Any local causal LM. Reproducible with a seed for the same batch of prompts (the random
    draws of one generate() call are shared by all rows of the batch)."""

    name = "transformers"
    concurrency = 1  # one generate() at a time; parallelism comes from batching
    paid = True

    def __init__(self, model: str | os.PathLike, batch_size: int = 8, device: str = "cpu", dtype: str = "float32"):
        self.model = str(Path(model).expanduser().resolve())  # part of cache keys
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self._tokenizer = None
        self._lm = None
        self._lock = threading.Lock()  # loading
        self._busy = threading.Lock()  # one generate() at a time: seeding touches torch's global RNG

    @classmethod
    def from_config(cls, cfg) -> "TransformersBackend":
        model = cfg.model or cfg.transformers.model
        if not model:
            raise ActionGPTError(
                "backend 'transformers' needs a model: set transformers.model to a local model directory or .gguf file"
            )
        t = cfg.transformers
        return cls(model, batch_size=t.batch_size, device=t.device, dtype=t.dtype)

    # -- loading ---------------------------------------------------------------------------
    def load(self):
        """Load the tokenizer and model once (thread-safe); returns (tokenizer, model)."""
        with self._lock:
            if self._lm is None:
                self._tokenizer, self._lm = self._load()
        return self._tokenizer, self._lm

    def _load(self):
        # Load errors repeat for every request: FatalBackendError stops the run at once.
        torch = import_torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress and messages go to stderr instead
        path = Path(self.model)
        if not path.exists():
            raise FatalBackendError(f"transformers model not found: {path} (give a local model directory or a .gguf file)")
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise FatalBackendError(f"bad value {self.dtype!r} for config key 'transformers.dtype': not a torch dtype")
        gguf_copy, load_dtype = None, dtype
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise FatalBackendError(f"{path} is not a model: give a model directory or a .gguf file")
            gguf_copy = dequantised_copy_dir(path)
            if gguf_copy.is_dir():
                source, extra, gguf_copy = gguf_copy, {}, None
            else:  # dequantise to float32 once; the copy then serves every dtype
                source, extra, load_dtype = path.parent, {"gguf_file": path.name}, torch.float32
                # Shown without --verbose: the first run is slow and should say why.
                log.warning("dequantising %s once (20-60 s); the copy goes to %s", path.name, gguf_copy)
        elif not (path / "config.json").is_file():
            raise FatalBackendError(f"{path} is not a transformers model directory (no config.json)")
        else:
            source, extra = path, {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=load_dtype, **extra)
        except Exception as exc:
            hint = " (GGUF files need: pip install gguf accelerate)" if isinstance(exc, ImportError) else ""
            raise FatalBackendError(f"cannot load a causal language model from {path}: {_first_line(exc)}{hint}") from None
        if gguf_copy is not None:
            _save_copy(tokenizer, lm, gguf_copy)
        try:
            lm = lm.to(device=self.device, dtype=dtype).eval()
        except Exception as exc:
            raise FatalBackendError(f"bad value {self.device!r} for config key 'transformers.device': {_first_line(exc)}") from None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            # Padded positions are masked out, so any existing token will do.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            if tokenizer.pad_token is None:
                raise FatalBackendError(f"the tokenizer of {path} has no pad, eos or unk token to pad batches with")
        return tokenizer, lm

    # -- generation ------------------------------------------------------------------------
    @staticmethod
    def render(tokenizer, prompt) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(prompt.as_messages(), tokenize=False, add_generation_prompt=True)
        return prompt.text

    def generate(self, requests: list[Request], k: int, params: SamplingParams) -> list[Completion]:
        """Blocking: k samples for each request in one generate() call."""
        torch = import_torch()
        tokenizer, lm = self.load()
        with self._busy:
            return self._generate(torch, tokenizer, lm, requests, k, params)

    def _generate(self, torch, tokenizer, lm, requests, k, params) -> list[Completion]:
        chat = bool(getattr(tokenizer, "chat_template", None))
        prompts = [self.render(tokenizer, r.prompt) for r in requests]
        # A chat template already writes the special tokens (BOS etc.) it wants.
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(lm.device)
        sample = params.temperature > 0
        rows = k if sample else 1  # greedy decoding gives the same text k times: compute it once
        options = dict(max_new_tokens=params.max_tokens, num_return_sequences=rows, do_sample=sample,
                       pad_token_id=tokenizer.pad_token_id)
        if sample:  # top_k=0: plain nucleus sampling, as the OpenAI API does (transformers defaults to 50)
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        # frequency/presence penalties have no transformers equivalent and are not applied.
        with torch.inference_mode(), _seeded(torch, params.seed, lm.device):
            out = lm.generate(**enc, **options)
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        stops = self._stop_ids(tokenizer, lm)
        completions = []
        for i in range(len(requests)):
            texts, reasons, used = [], [], 0
            for row in new[i * rows:(i + 1) * rows]:
                end = next((j for j, t in enumerate(row) if t in stops), None)
                kept = row if end is None else row[:end]
                used += len(kept) + (end is not None)  # the end-of-sequence token counts, padding doesn't
                reasons.append("length" if end is None else "stop")
                texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
            if rows < k:
                texts, reasons, used = texts * k, reasons * k, used * k
            completions.append(Completion(
                texts=texts,
                raw={"finish_reasons": reasons},
                finish_reasons=reasons,
                prompt_tokens=int(enc["attention_mask"][i].sum()),
                completion_tokens=used,
                requests=1 if i == 0 else 0,  # one generate() call serves the whole batch
            ))
        return completions

    @staticmethod
    def _stop_ids(tokenizer, lm) -> set:
        eos = lm.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        ids.add(tokenizer.eos_token_id)
        ids.discard(None)
        return ids

    async def complete_batch(self, requests: list[Request], k: int, params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            # generate() blocks for seconds: keep the event loop responsive.
            out += await asyncio.to_thread(self.generate, requests[start:start + self.batch_size], k, params)
        return out

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        return (await self.complete_batch([request], k, params))[0]


@hookimpl
def register_backends(register):
    register("transformers", TransformersBackend.from_config, options=TransformersOptions,
             description="any local causal LM directory or GGUF file")
