"""The interface every LLM backend implements."""
from __future__ import annotations

import asyncio

from dataclasses import dataclass
from typing import Optional

from ..hookspecs import hookimpl
from ..options import option


@dataclass(frozen=True)
class Request:
    """One phrase to expand and its rendered prompt (pack/identity backends need the phrase)."""

    phrase: str
    prompt: object  # templates.Prompt


@dataclass
class Completion:
    """What one prompt produced: k (or fewer) raw texts plus accounting."""

    texts: list[str]
    raw: object = None  # JSON-serialisable raw response (never holds credentials)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 1  # HTTP requests / generate calls spent, retries included
    error: str | None = None  # why this request produced nothing (e.g. phrase not in a pack)
    # Why each text ended, parallel to ``texts``: "stop", "length" (cut off by max_tokens) or None (unknown).
    finish_reasons: list | None = None


@dataclass
class SamplingParams:
    """How to sample; also the schema of the ``sampling`` config section (one type for both)."""

    # The release's Completions parameters (text-davinci-002).
    temperature: float = option(0.5, "the release's 0.5", low=0.0, high=2.0)
    top_p: float = option(1.0, "nucleus sampling", low=0.0, high=1.0)
    max_tokens: int = option(128, "per description; longer answers are cut and re-asked", low=1, high=32_768)
    frequency_penalty: float = option(0.0, "OpenAI-compatible servers only", low=-2.0, high=2.0)
    presence_penalty: float = option(0.0, "OpenAI-compatible servers only", low=-2.0, high=2.0)
    seed: Optional[int] = option(None, "fixed seed for reproducible samples (where the backend supports it)",
                                 low=0)

    @classmethod
    def from_config(cls, cfg) -> "SamplingParams":
        s = cfg.sampling
        return cls(s.temperature, s.top_p, s.max_tokens, s.frequency_penalty, s.presence_penalty, s.seed)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Backend:
    """Turns requests (phrase + prompt) into k samples each.

    ``name`` and ``model`` identify the backend in cache keys. ``batch_size`` is how many
    prompts one ``complete_batch`` call should receive (local models batch; HTTP APIs take one
    and run concurrently up to ``concurrency``). ``paid`` marks backends whose calls cost money or
    time worth caching; their output is also cleaned (identity and pack are free, verbatim, and
    bypass the store).
    """

    name: str = "base"
    model: str = ""
    batch_size: int = 1
    concurrency: int = 1
    paid: bool = True
    recommended_template: str = "actiongpt"  # used when the user picks no template

    def identity(self) -> dict:
        """What names this backend's outputs in store keys and pack manifests, besides its name.

        Two backends whose answers could differ must differ here (a server's endpoint, an API mode).
        """
        return {"model": str(self.model)}

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        raise NotImplementedError

    async def complete_batch(self, requests: list[Request], k: int, params: SamplingParams) -> list[Completion]:
        return list(await asyncio.gather(*(self.complete(r, k, params) for r in requests)))

    async def aclose(self) -> None:
        pass


@hookimpl(trylast=True)
def query_llm(backend, requests, k, params):
    return backend.complete_batch(requests, k, params)
