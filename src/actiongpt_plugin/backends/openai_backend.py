"""The `openai` backend: OpenAI's API or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI).

One request per prompt asks for all k samples (n=k). Retries are ours (the client's are off) so
each attempt is counted in ``Completion.requests``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random

from ..lazy import openai

from dataclasses import dataclass
from typing import Optional

from ..config import openai_api_key
from ..options import option
from ..errors import ActionGPTError, FatalBackendError
from ..hookspecs import hookimpl
from .base import Backend, Completion, Request, SamplingParams

RETRY_STATUS = (408, 409, 429)  # plus every 5xx
NO_KEY = "OpenAI backend needs an API key: set OPENAI_API_KEY or openai.api_key"


log = logging.getLogger("actiongpt")


@dataclass
class OpenAIOptions:
    """OpenAI's API or any OpenAI-compatible server"""

    api_key: Optional[str] = option(None, "else OPENAI_API_KEY; never written to the store, packs or dumps",
                                    secret=True)
    base_url: Optional[str] = option(None, "else OPENAI_BASE_URL (vLLM, Ollama, llama.cpp server, TGI)")
    model: str = option("gpt-4o-mini", "the model asked for")
    api: str = option("chat", "chat, or completions (legacy, like the release's text-davinci-002)",
                      choices=("chat", "completions"))
    concurrency: int = option(32, "requests in flight", low=1, high=1024)
    max_retries: int = option(5, "429 (Retry-After honoured), 5xx, timeouts, dropped connections, malformed replies",
                              low=0, high=100)
    timeout: float = option(60.0, "seconds per request", low=0.001, high=86_400.0)
    backoff_base: float = option(0.5, "first retry delay, doubled per attempt", low=0.0, high=3600.0)
    backoff_max: float = option(30.0, "longest retry delay", low=0.0, high=86_400.0)


class _Malformed(Exception):
    """A 200 reply we cannot use; treated as transient like a 5xx."""


def retry_after(headers) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms wins over Retry-After), if any."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) / scale)
        except (TypeError, ValueError):
            continue  # absent, or an HTTP date: fall back to our own backoff
    return None


class OpenAIBackend(Backend):
    name = "openai"
    batch_size = 1  # HTTP: one prompt per call, many calls at once
    paid = True

    def __init__(self, cfg):
        o = cfg.openai
        self.model = cfg.model or o.model
        self.api = o.api
        self.concurrency = o.concurrency
        self.max_retries = o.max_retries
        self.backoff_base, self.backoff_max = o.backoff_base, o.backoff_max
        base_url = o.base_url or None  # None: the client reads OPENAI_BASE_URL itself
        key = openai_api_key(cfg)
        if not key:
            if not (base_url or os.environ.get("OPENAI_BASE_URL")):
                raise ActionGPTError(NO_KEY)
            key = "EMPTY"  # local servers usually ignore the key but the client requires one
        self._key = key
        self._client_args = dict(api_key=key, base_url=base_url, timeout=o.timeout, max_retries=0)
        self._loop = self._client = self._semaphore = None

    def client_options(self) -> dict:
        """Arguments for an openai client that talks to the same server with the same key."""
        return {k: v for k, v in self._client_args.items() if k != "max_retries"}

    def redact(self, text: str) -> str:
        return self._redact(text)

    def _session(self):
        # An httpx pool and a Semaphore belong to one event loop; a synchronous caller may run
        # each batch under a fresh asyncio.run(), so make new ones when the loop changes.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._client = openai.AsyncOpenAI(**self._client_args)
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._client, self._semaphore

    def request_body(self, request: Request, k: int, params: SamplingParams) -> dict:
        """The JSON body of one request for k samples (the Batch API sends the same body)."""
        body = dict(
            model=self.model,
            n=k,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
        )
        if params.seed is not None:
            body["seed"] = params.seed
        if self.api == "chat":
            body["messages"] = request.prompt.as_messages()
        else:
            body["prompt"] = request.prompt.text
        return body

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        client, semaphore = self._session()
        args = self.request_body(request, k, params)
        # The client's public raw `post`, parsed as plain JSON: the SDK's typed request and reply
        # models cost more CPU per request than everything else we do, and at 32 requests in flight
        # on a small machine the client's CPU, not the latency, is the bottleneck (docs/benchmarks.md).
        path = "/chat/completions" if self.api == "chat" else "/completions"

        attempt = 0
        while True:
            attempt += 1
            wait = None
            try:
                async with semaphore:
                    reply = await client.post(path, body=args, cast_to=bytes)
                data = json.loads(reply)
                if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                    raise _Malformed("reply has no choices")
                return self._completion(data, attempt)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status < 500 and status not in RETRY_STATUS:
                    # Bad key, no access, unknown model: every other request would fail the same way.
                    error = FatalBackendError if status in (401, 403, 404) else ActionGPTError
                    raise error(f"OpenAI request failed: {self._describe(exc)}") from None
                reason, wait = f"HTTP {status}", retry_after(exc.response.headers)
            except openai.APITimeoutError:
                reason = f"timed out after {self._client_args['timeout']} s"
            except openai.APIConnectionError as exc:
                reason = f"connection error ({exc.__cause__ or exc})"
            except (ValueError, _Malformed) as exc:  # invalid JSON, or JSON of the wrong shape
                reason = f"malformed reply ({type(exc).__name__})"
            if attempt > self.max_retries:
                raise ActionGPTError(
                    f"OpenAI request to {client.base_url} failed after {attempt} attempt(s): {self._redact(reason)}"
                ) from None
            # Exponential backoff with jitter; a server-given wait is a floor, spread a little so
            # requests throttled together do not all come back at the same instant.
            delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if wait is not None:
                delay = max(delay, wait * random.uniform(1.0, 1.1))
            log.info("%s; retry %d/%d in %.1f s", self._redact(reason), attempt, self.max_retries, delay)
            await asyncio.sleep(delay)

    def _completion(self, data: dict, attempt: int) -> Completion:
        texts = []
        for choice in data["choices"]:
            choice = choice if isinstance(choice, dict) else {}
            message = choice.get("message") if self.api == "chat" else None
            text = (message or {}).get("content") if self.api == "chat" else choice.get("text")
            texts.append(text if isinstance(text, str) else "")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Completion(
            texts=texts,
            raw=data,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            requests=attempt,
        )

    def _describe(self, exc: openai.APIStatusError) -> str:
        status = exc.status_code
        if status == 401:
            return "HTTP 401: the API key was rejected (check OPENAI_API_KEY or openai.api_key)"
        if status == 404:
            return f"HTTP 404: unknown model {self.model!r} or wrong base URL ({self._client.base_url})"
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        return self._redact(f"HTTP {status}: {message or exc.message}")

    def _redact(self, text: str) -> str:
        text = " ".join(str(text).split())[:300]  # one line, bounded
        return text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # its event loop is already gone; nothing left to release
                pass


def factory(cfg) -> OpenAIBackend:
    return OpenAIBackend(cfg)


@hookimpl
def register_backends(register):
    register("openai", factory, options=OpenAIOptions, needs_key=True, key_env="OPENAI_API_KEY", auto=10,
             description="OpenAI's API or any OpenAI-compatible server (OPENAI_BASE_URL)")
