"""The `openai` backend: OpenAI's API or any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI).

One request per prompt asks for all k samples (n=k); a server that ignores `n` (llama.cpp's server,
Ollama) answers with one choice, and from then on gets k requests with n=1 (seeds seed, seed+1, ...).
How many requests are in flight adapts to what the server sustains (pacing.py), with
`openai.concurrency` as the ceiling. Retries are ours (the client's are off) so every attempt is
counted in ``Completion.requests``; a request whose retries run out comes back as a Completion with
its error and its attempts, not as an exception.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from ..lazy import openai

from ..options import option
from ..errors import ActionGPTError, FatalBackendError, redact
from ..hookspecs import hookimpl
from ..pacing import AdaptiveLimiter
from .base import Backend, Completion, Request, SamplingParams

RETRY_STATUS = (408, 409, 429)  # plus every 5xx
OVERLOAD_STATUS = (429, 503)  # the server says it has too much to do: fewer in flight
NO_KEY = "OpenAI backend needs an API key: set OPENAI_API_KEY or openai.api_key"
OFFICIAL_URL = "https://api.openai.com/v1"
OFFICIAL_DEFAULT_MODEL = "gpt-4o-mini"
MODELS_TIMEOUT = 10.0  # seconds for GET /models when no model is given
LONG_WAIT = 10.0  # a retry wait at least this long (or cut short by max_wait) is announced on stderr


log = logging.getLogger("actiongpt")


@dataclass
class OpenAIOptions:
    """OpenAI's API or any OpenAI-compatible server"""

    api_key: Optional[str] = option(None, "else OPENAI_API_KEY; never written to the store, packs or config dumps",
                                    secret=True)
    base_url: Optional[str] = option(None, "else OPENAI_BASE_URL (vLLM, Ollama, llama.cpp server, TGI)")
    model: Optional[str] = option(
        None, "null: gpt-4o-mini on OpenAI's API; on another server the one model it lists (GET /v1/models)")
    api: str = option("chat", "chat | completions (legacy, like the release's text-davinci-002)",
                      choices=("chat", "completions"))
    concurrency: int = option(32, "most requests in flight (the ceiling of the adaptive window)", low=1)
    adaptive: bool = option(True, "adapt requests in flight to what the server sustains; false: always `concurrency`")
    max_retries: int = option(5, "429 (Retry-After honoured), 5xx, timeouts, dropped connections, malformed replies",
                              low=0)
    timeout: float = option(60.0, "seconds per request", low=0)
    backoff_base: float = option(0.5, "seconds before the first retry, doubled at each retry", low=0)
    backoff_max: float = option(30.0, "longest backoff between retries (seconds)", low=0)
    max_wait: float = option(60.0, "longest wait before a retry (seconds), even when Retry-After asks for more", low=0)


class _Malformed(Exception):
    """A 200 reply we cannot use; treated as transient like a 5xx."""


def retry_after(headers, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms wins over Retry-After), if any.

    Retry-After is either seconds or an HTTP date (RFC 9110); the date counts from ``now`` (epoch s).
    """
    try:
        return max(0.0, float(headers.get("retry-after-ms")) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: fall back to our own backoff
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # HTTP dates are GMT
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def public_url(url: str) -> str:
    """``url`` without credentials (user:password@), query or trailing slash: safe for keys and messages."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _refused(exc: BaseException) -> bool:
    """Whether a connection error is a refused connection (nothing listens on that port)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or "connection refused" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _dedupe(texts: list[str], reasons: list) -> tuple[list[str], list]:
    """Drop exact repeats (servers that ignore `n` can answer two requests alike), keeping order."""
    seen, kept, kept_reasons = set(), [], []
    for text, reason in zip(texts, reasons):
        key = text.strip()
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(text)
        kept_reasons.append(reason)
    return kept, kept_reasons


class OpenAIBackend(Backend):
    name = "openai"
    batch_size = 1  # HTTP: one prompt per call, many calls at once
    paid = True

    def __init__(self, config):
        o = config.openai
        self._model = config.model or o.model  # None: resolved on first use (see `model`)
        self.api = o.api
        # expand.concurrency caps requests in flight too: against a server that ignores n one phrase is k requests.
        self.concurrency = min(o.concurrency, config.expand.concurrency)
        self.adaptive = o.adaptive
        self.max_retries = o.max_retries
        self.timeout = o.timeout
        self.backoff_base, self.backoff_max, self.max_wait = o.backoff_base, o.backoff_max, o.max_wait
        base_url = o.base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = o.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not base_url:
                raise ActionGPTError(NO_KEY)
            key = "EMPTY"  # local servers usually ignore the key but the client requires one
        self._key = key
        self.endpoint = public_url(base_url or OFFICIAL_URL)
        self.official = self.endpoint == OFFICIAL_URL
        self._client_args = dict(api_key=key, base_url=base_url or OFFICIAL_URL, timeout=o.timeout, max_retries=0)
        self.limiter = AdaptiveLimiter(self.concurrency, adaptive=self.adaptive, timeout=self.timeout)
        self.ignores_n = False  # learnt from the first reply that had one choice where n > 1 were asked
        self._reached = False  # a request has succeeded: a refused connection is transient from then on
        self._model_lock = threading.Lock()
        self._quiet_until = 0.0  # no second long-wait warning before this time
        self._seed_offsets: dict[tuple, int] = {}  # (phrase, prompt) -> seed offsets used so far
        self._loop = self._client = None

    def client_options(self) -> dict:
        """Arguments for an openai client that talks to the same server with the same key."""
        return {k: v for k, v in self._client_args.items() if k != "max_retries"}

    def redact(self, text: str) -> str:
        return self._redact(text)

    # -- which model, which server -------------------------------------------------------------
    @property
    def model(self) -> str:
        """The model id, asked of the server (GET /models) when none was given."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._resolve_model()
        return self._model

    def _resolve_model(self) -> str:
        if self.official:
            return OFFICIAL_DEFAULT_MODEL
        client = openai.OpenAI(**{**self._client_args, "timeout": MODELS_TIMEOUT})
        try:
            ids = [m.id for m in client.models.list()]
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise FatalBackendError(self._unreachable(exc)) from None
        except openai.APIStatusError as exc:
            raise FatalBackendError(
                f"cannot list the models of the server at {self.endpoint} ({self._describe(exc)}): pass --model"
            ) from None
        finally:
            client.close()
        if len(ids) == 1:
            return ids[0]
        if not ids:
            raise ActionGPTError(f"the server at {self.endpoint} lists no models: pass --model")
        shown = ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        raise ActionGPTError(f"the server at {self.endpoint} serves {len(ids)} models ({shown}): pass --model")

    def _unreachable(self, exc: BaseException) -> str:
        if _refused(exc):
            why = "connection refused"
        elif isinstance(exc, openai.APITimeoutError):
            why = f"no answer within {MODELS_TIMEOUT:g} s"
        else:
            why = self._redact(str(exc.__cause__ or exc))
        return f"cannot reach the server at {self.endpoint}: {why}"

    def identity(self) -> dict:
        """Model, and the server unless it is OpenAI's, and the API unless it is chat (older keys stay valid)."""
        out = {"model": self.model}
        if not self.official:
            out["endpoint"] = self.endpoint
        if self.api != "chat":
            out["api"] = self.api
        return out

    # -- requests ------------------------------------------------------------------------------
    def _session(self):
        # An httpx pool belongs to one event loop; a synchronous caller may run each batch under a
        # fresh asyncio.run(), so make a new one when the loop changes. The limiter keeps what it learnt.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._client = openai.AsyncOpenAI(**self._client_args)
            if self.limiter.in_flight:  # slots held on a loop that is gone would never come back
                self.limiter = AdaptiveLimiter(self.concurrency, adaptive=self.adaptive, timeout=self.timeout)
        return self._client

    def request_body(self, request: Request, k: int, params: SamplingParams, seed_offset: int = 0) -> dict:
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
            body["seed"] = params.seed + seed_offset
        if self.api == "chat":
            body["messages"] = request.prompt.as_messages()
        else:
            body["prompt"] = request.prompt.text
        return body

    async def complete(self, request: Request, k: int, params: SamplingParams) -> Completion:
        if self._model is None:
            await asyncio.to_thread(lambda: self.model)  # GET /models without blocking the loop
        offset = self._reserve_seeds(request, k)
        if self.ignores_n and k > 1:
            return await self._fan_out(request, k, params, offset, first=None)
        completion = await self._ask(request, k, params, seed_offset=offset)
        if k > 1 and completion.error is None and len(completion.texts) == 1:
            if not self.ignores_n:
                log.info("the server at %s ignores n (one choice for n=%d): asking for one sample per request",
                         self.endpoint, k)
            self.ignores_n = True
            return await self._fan_out(request, k, params, offset, first=completion)
        return completion

    def _reserve_seeds(self, request: Request, k: int) -> int:
        """The first of k seed offsets for this call. A prompt asked again (the expander re-asks for
        samples that cleaning rejected) continues after the seeds it used, so that with a fixed seed
        the new samples are not repeats of the old ones; from a fresh start the sequence is the same."""
        key = (request.phrase, request.prompt.text)
        start = self._seed_offsets.get(key, 0)
        self._seed_offsets[key] = start + k
        return start

    async def _fan_out(self, request: Request, k: int, params: SamplingParams, offset: int,
                       first: Completion | None) -> Completion:
        """k samples as k requests with n=1 (one already in ``first``), seeds offset, offset+1, ..."""
        count = 1 if params.temperature <= 0 else k  # greedy: every request would repeat the first
        start = 0 if first is None else 1
        replies = await asyncio.gather(*(self._ask(request, 1, params, seed_offset=offset + i)
                                         for i in range(start, count)), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        parts = ([first] if first is not None else []) + list(replies)
        texts = [t for p in parts for t in p.texts]
        reasons = [r for p in parts for r in (p.finish_reasons or [None] * len(p.texts))]
        texts, reasons = _dedupe(texts, reasons)
        if count == 1 and k > 1 and texts:  # greedy: the one answer is every sample, as a server honouring n gives
            texts, reasons = texts * k, reasons * k
        errors = [p.error for p in parts if p.error]
        return Completion(
            texts=texts,
            raw=[p.raw for p in parts if p.raw is not None],
            prompt_tokens=sum(p.prompt_tokens for p in parts),
            completion_tokens=sum(p.completion_tokens for p in parts),
            requests=sum(p.requests for p in parts),
            error=errors[0] if errors and not texts else None,
            finish_reasons=reasons,
        )

    async def _ask(self, request: Request, k: int, params: SamplingParams, seed_offset: int = 0) -> Completion:
        """One request for k samples, retried; a Completion with ``error`` when the retries run out."""
        client = self._session()
        args = self.request_body(request, k, params, seed_offset)
        # The client's public raw `post`, parsed as plain JSON: the SDK's typed request and reply
        # models cost more CPU per request than everything else we do, and at 32 requests in flight
        # on a small machine the client's CPU, not the latency, is the bottleneck (docs/benchmarks.md).
        path = "/chat/completions" if self.api == "chat" else "/completions"

        attempt = 0
        while True:
            attempt += 1
            wait, outcome = None, "error"
            slot = await self.limiter.acquire()  # every attempt, retries too, waits for a slot
            try:
                reply = await client.post(path, body=args, cast_to=bytes)
                data = json.loads(reply)
                if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                    raise _Malformed("reply has no choices")
                outcome = "ok"
                self._reached = True
                return self._completion(data, attempt)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status < 500 and status not in RETRY_STATUS:
                    # Bad key, no access, unknown model: every other request would fail the same way.
                    error = FatalBackendError if status in (401, 403, 404) else ActionGPTError
                    refused = error(f"OpenAI request failed: {self._describe(exc)}")
                    refused.requests = attempt  # sent and refused: still counted in the run's stats
                    raise refused from None
                outcome = "overload" if status in OVERLOAD_STATUS else "error"
                reason, wait = f"HTTP {status}", retry_after(exc.response.headers)
            except openai.APITimeoutError:
                outcome = "overload"  # most likely it waited in the server's queue
                reason = f"timed out after {self.timeout} s"
            except openai.APIConnectionError as exc:
                if not self._reached and _refused(exc):
                    # Nothing ever answered: a server that is not running, not a passing fault.
                    raise FatalBackendError(self._unreachable(exc)) from None
                reason = f"connection error ({exc.__cause__ or exc})"
            except (ValueError, _Malformed) as exc:  # invalid JSON, or JSON of the wrong shape
                reason = f"malformed reply ({type(exc).__name__})"
            finally:
                self.limiter.release(slot, outcome)
            if attempt > self.max_retries:
                message = f"OpenAI request to {self.endpoint} failed after {attempt} attempt(s): {self._redact(reason)}"
                return Completion(texts=[], requests=attempt, error=message, finish_reasons=[])
            await asyncio.sleep(self._delay(attempt, wait, reason))

    def _delay(self, attempt: int, wait: float | None, reason: str) -> float:
        """Seconds before the next attempt: exponential backoff with jitter, at least a server-given wait,
        at most ``max_wait``. The sleep holds no slot."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if wait is not None:
            # A floor, spread a little so requests throttled together do not all come back at once.
            delay = max(delay, wait * random.uniform(1.0, 1.1))
            self.limiter.pause(min(wait, self.max_wait))  # the server asked everyone to wait
        capped = delay > self.max_wait
        delay = min(delay, self.max_wait)
        now = time.monotonic()
        if (delay >= LONG_WAIT or capped) and now >= self._quiet_until:
            self._quiet_until = now + delay
            asked = f"; the server asked for {wait:.3g} s, capped by openai.max_wait" if capped and wait else ""
            log.warning("%s from %s: waiting %.3g s before retrying%s", self._redact(reason), self.endpoint, delay, asked)
        else:
            log.info("%s; retry %d/%d in %.1f s", self._redact(reason), attempt, self.max_retries, delay)
        return delay

    def _completion(self, data: dict, attempt: int) -> Completion:
        texts, reasons = [], []
        for choice in data["choices"]:
            choice = choice if isinstance(choice, dict) else {}
            message = choice.get("message") if self.api == "chat" else None
            text = (message or {}).get("content") if self.api == "chat" else choice.get("text")
            texts.append(text if isinstance(text, str) else "")
            reason = choice.get("finish_reason")
            reasons.append(reason if isinstance(reason, str) else None)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Completion(
            texts=texts,
            raw=data,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            requests=attempt,
            finish_reasons=reasons,
        )

    def _describe(self, exc: openai.APIStatusError) -> str:
        status = exc.status_code
        if status == 401:
            return "HTTP 401: the API key was rejected (check OPENAI_API_KEY or openai.api_key)"
        if status == 404:
            return f"HTTP 404: unknown model {self._model!r} or wrong base URL ({self.endpoint})"
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        return self._redact(f"HTTP {status}: {message or exc.message}")

    def _redact(self, text: str) -> str:
        text = " ".join(str(text).split())[:300]  # one line, bounded
        return redact(text.replace(self._key, "***") if self._key and self._key != "EMPTY" else text)

    async def aclose(self) -> None:
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            try:
                await client.close()
            except RuntimeError:  # its event loop is already gone; nothing left to release
                pass


@hookimpl
def register_backends(register):
    register("openai", OpenAIBackend, options=OpenAIOptions, needs_key=True, key_env="OPENAI_API_KEY", auto=10,
             description="OpenAI's API or any OpenAI-compatible server (OPENAI_BASE_URL)")
