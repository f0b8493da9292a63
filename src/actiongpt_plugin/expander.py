"""Expansion: action phrases -> k descriptions each, through the store, concurrently.

Flow per run: normalise and dedupe phrases, render prompts (`build_prompt` hook), look every key up
in the store, then ask the backend (`query_llm` hook) only for what is missing, in batches of the
backend's batch_size with up to `concurrency` batches in flight. Each answer is cleaned
(`clean_descriptions` hook) and written to the store the moment it arrives, so an interrupted run
loses nothing already paid for; phrases still short of k are asked again for the rest only.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from .backends.base import Backend, Request, SamplingParams
from .config import load_config, openai_api_key, store_path, validate_choices
from .errors import ActionGPTError, FatalBackendError, MissingDescriptionsError
from .plugins import get_plugin_manager, get_registry
from .store import DescriptionStore, make_key


def normalise_phrase(phrase: str, max_chars: int) -> str:
    if not isinstance(phrase, str):
        raise ActionGPTError(f"a phrase must be a string, got {type(phrase).__name__}")
    text = " ".join(phrase.split())
    if not text:
        raise ActionGPTError("empty phrase: give an action such as 'jump'")
    if len(text) > max_chars:
        raise ActionGPTError(f"phrase of {len(text)} characters is too long (limit expand.max_phrase_chars={max_chars}): {text[:40]!r}...")
    return text


def resolve_backend_name(cfg: DictConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "openai" if openai_api_key(cfg) else "embedded"


@dataclass
class ExpandStats:
    phrases: int = 0
    cache_hits: int = 0
    expanded: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: dict = field(default_factory=dict)  # phrase -> reason

    def as_dict(self) -> dict:
        return {**self.__dict__, "failures": dict(self.failures)}


@dataclass
class ExpandResult:
    descriptions: dict  # phrase as given -> list of k descriptions (failed phrases absent)
    stats: ExpandStats
    rows: list = field(default_factory=list)  # one pack row per expanded phrase, with its store key


@dataclass
class _Item:
    phrase: str
    request: Request
    key: str
    have: list
    chosen: list | None = None  # the k descriptions used, once complete (set by Expander._need)
    short: str = ""  # why it is not complete yet


class Expander:
    def __init__(self, cfg: DictConfig | None = None, **values):
        cfg = cfg if cfg is not None else load_config(**values)
        validate_choices(cfg)
        self.backend_name = resolve_backend_name(cfg)
        self._backend: Backend | None = None
        cfg = OmegaConf.merge(cfg, {})  # private copy: we fill in the resolved template
        self.cfg = cfg
        self._store: DescriptionStore | None = None
        self._settings = None
        self._meta_base = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the parts, built on first use -------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            factory = get_registry().backend(self.backend_name)
            self._backend = factory(self.cfg)
            if not self.cfg.template:
                self.cfg.template = self._backend.recommended_template
        return self._backend

    @property
    def settings(self):
        """The resolved config as a plain read-only dataclass (config.Config), made once.

        Hooks receive it as ``config``: attribute reads on it are ~50x cheaper than on a DictConfig,
        which matters at a few dozen reads per phrase and thousands of phrases.
        """
        if self._settings is None:
            self.backend  # resolves the default template first
            self._settings = OmegaConf.to_object(self.cfg)
        return self._settings

    @property
    def params(self) -> SamplingParams:
        return SamplingParams.from_config(self.settings)

    @property
    def wanted(self) -> int:
        """Samples to collect per phrase: k, or more when a selector keeps the best k."""
        s = self.settings
        return math.ceil(s.k * s.expand.oversample) if self.backend.paid else s.k

    @property
    def template(self):
        self.backend  # resolves the default template
        return get_registry().template(self.cfg.template)

    @property
    def store(self) -> DescriptionStore:
        if self._store is None:
            self._store = DescriptionStore(store_path(self.cfg))
        return self._store

    def close(self):
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._backend is not None:
            self._run_async(self._backend.aclose())
            self._backend = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _run_async(self, coro):
        """Run on one private loop for the Expander's life: async clients stay bound to it."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coro)
        # Called from inside a running loop (notebooks, async training code): use a worker thread.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(self._loop.run_until_complete, coro).result()

    # -- public API ----------------------------------------------------------------------------
    def expand(self, phrases) -> dict[str, list[str]]:
        """k descriptions for every phrase; raises if any phrase could not be expanded."""
        if isinstance(phrases, str):
            phrases = [phrases]
        result = self.run(phrases)
        if result.stats.failures:
            first = next(iter(result.stats.failures.items()))
            raise ActionGPTError(
                f"{len(result.stats.failures)} phrase(s) could not be expanded; first: {first[0]!r}: {first[1]}"
            )
        return result.descriptions

    def run(self, phrases, progress=None) -> ExpandResult:
        """Expand, reporting each finished phrase to ``progress(phrase, ok)``; failures are collected."""
        by_text, items, stats = self._prepare(phrases)
        todo = [it for it in items if self._need(it)]
        stats.cache_hits = len(items) - len(todo)
        if progress:
            for it in items:
                if it.chosen is not None:
                    progress(it.phrase, True)
        if todo and self.cfg.store.offline:
            raise MissingDescriptionsError([it.phrase for it in todo])
        if todo:
            self._run_async(self._expand_missing(todo, stats, self.cacheable, progress))
        return self._finish(by_text, items, stats)

    # -- internals (batch.py shares them) --------------------------------------------------------
    @property
    def cacheable(self) -> bool:
        return self.backend.paid and self.cfg.store.enabled

    def _prepare(self, phrases):
        """Dedupe the phrases (as given -> normalised) and load what the store has for each."""
        by_text: dict[str, list[str]] = {}
        for phrase in phrases:
            by_text.setdefault(normalise_phrase(phrase, self.cfg.expand.max_phrase_chars), []).append(phrase)
        items = self._items(list(by_text))
        if self.cacheable:
            stored = self.store.get_many(it.key for it in items)
            for it in items:
                it.have = list(stored.get(it.key, []))
        return by_text, items, ExpandStats(phrases=len(by_text))

    def _need(self, item: _Item) -> int:
        """More samples a phrase needs (0: done, its k descriptions in ``item.chosen``)."""
        cfg, wanted = self.settings, self.wanted
        item.chosen = None
        if len(item.have) < wanted:
            item.short = f"only {len(item.have)} of {wanted} usable descriptions"
            return wanted - len(item.have)
        if not self.backend.paid:
            item.chosen = item.have[: cfg.k]
            return 0
        select = get_plugin_manager().hook.select_descriptions
        chosen = select(phrase=item.phrase, candidates=list(item.have), k=cfg.k, config=cfg)
        if len(chosen) >= cfg.k:
            item.chosen = list(chosen[: cfg.k])
            return 0
        # The selector rejected too many: ask for the missing ones, oversampled like the first request.
        item.short = f"only {len(chosen)} of {cfg.k} descriptions accepted by the selector (of {len(item.have)})"
        return math.ceil((cfg.k - len(chosen)) * cfg.expand.oversample)

    def _finish(self, by_text: dict, items: list, stats: ExpandStats) -> ExpandResult:
        out, rows = {}, []
        for it in items:
            if it.chosen is not None:
                for original in by_text[it.phrase]:
                    out[original] = it.chosen
                rows.append({"phrase": it.phrase, "descriptions": it.chosen, "key": it.key, **self._meta(it)})
            elif it.phrase not in stats.failures:
                stats.failures[it.phrase] = it.short
        return ExpandResult(out, stats, rows)

    def _items(self, texts: list[str]) -> list[_Item]:
        backend, template, cfg = self.backend, self.template, self.settings
        pm = get_plugin_manager()
        params = self.params
        items = []
        for text in texts:
            prompt = pm.hook.build_prompt(template=template, phrase=text, config=cfg)
            key = make_key(
                backend=self.backend_name, identity=backend.identity(), template_name=template.name,
                template_version=template.version, template_fingerprint=template.fingerprint, prompt=prompt,
                params=params.as_dict(), k=self.wanted,
            )
            items.append(_Item(text, Request(text, prompt), key, []))
        return items

    def _meta(self, item: _Item) -> dict:
        if self._meta_base is None:
            template = self.template
            self._meta_base = {
                **self.backend.identity(), "backend": self.backend_name, "template": template.name,
                "template_version": template.version, "params": self.params.as_dict(), "k": self.wanted,
                "provenance": f"{self.backend_name}:{self.backend.model}",
            }
        return {**self._meta_base, "prompt": item.request.prompt.text}

    async def _expand_missing(self, todo, stats: ExpandStats, cacheable: bool, progress) -> None:
        backend, cfg = self.backend, self.settings
        pm = get_plugin_manager()
        params = self.params
        concurrency = max(1, min(cfg.expand.concurrency, backend.concurrency))
        gate = asyncio.Semaphore(concurrency)
        size = max(1, backend.batch_size)
        batches = [todo[i: i + size] for i in range(0, len(todo), size)]
        fatal: list[BaseException] = []

        async def ask(batch, n):
            completions = await pm.hook.query_llm(backend=backend, requests=[it.request for it in batch], k=n, params=params)
            for it, completion in zip(batch, completions):
                stats.requests += completion.requests
                stats.prompt_tokens += completion.prompt_tokens
                stats.completion_tokens += completion.completion_tokens
                if completion.error:
                    stats.failures[it.phrase] = completion.error
                texts = completion.texts
                if backend.paid:
                    texts = pm.hook.clean_descriptions(phrase=it.phrase, texts=texts, config=cfg,
                                                       finish_reasons=completion.finish_reasons)
                if cacheable:
                    it.have = self.store.append(
                        it.key, phrase=it.phrase, descriptions=texts, raw=completion.raw, meta=self._meta(it),
                        prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                        requests=completion.requests,
                    )
                else:
                    it.have = it.have + list(texts)

        async def work(batch):
            async with gate:
                if fatal:
                    return
                try:
                    # Paid backends get extra rounds for phrases left short by cleaning, short replies or
                    # a selector that rejected candidates.
                    rounds = 1 + (cfg.expand.attempts if backend.paid else 0)
                    for _ in range(rounds):
                        needs: dict[int, list] = {}
                        for it in batch:
                            n = self._need(it)
                            if n:
                                needs.setdefault(n, []).append(it)
                        if not needs:
                            break
                        for n in sorted(needs):
                            await ask(needs[n], n)
                except FatalBackendError as exc:
                    fatal.append(exc)
                except ActionGPTError as exc:
                    for it in batch:
                        if it.chosen is None:
                            stats.failures[it.phrase] = str(exc)
            for it in batch:
                done = self._need(it) == 0
                if done:
                    stats.expanded += 1
                    stats.failures.pop(it.phrase, None)  # a later round made up for an earlier error
                if progress and not fatal:
                    progress(it.phrase, done)

        await asyncio.gather(*(work(b) for b in batches))
        if fatal:
            raise fatal[0]
