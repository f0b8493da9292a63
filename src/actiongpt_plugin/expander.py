"""Expansion: action phrases -> k descriptions each, through the store, concurrently.

The public API is a plan and its execution:

    plan = expander.plan(phrases)      # validate, dedupe, render prompts, look the store up
    expander.execute(plan)             # ask the backend for what is missing (or another flow does,
                                       #   calling expander.record(job, completion) per answer)
    result = expander.result(plan)     # {phrase: k descriptions}, stats, pack rows

``Expander.need(job)`` says how many more samples a phrase needs (a count check first; the
``select_descriptions`` hook runs once per new set of candidates). Each answer is cleaned
(``clean_descriptions`` hook) and written to the store the moment it arrives, so an interrupted run
loses nothing already paid for.

Several processes expanding into one store pay once per phrase: before paying, a process claims the
phrase's store key (a lease in the same SQLite file); the others park the phrase and read the answer
when it lands, or take the lease over if its owner died. The store is re-read before every round.
"""
from __future__ import annotations

import asyncio
import logging
import math
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from .backends.base import Backend, Request, SamplingParams
from .config import load_config, settings, store_path, validate_choices
from .errors import ActionGPTError, FatalBackendError, MissingDescriptionsError
from .plugins import get_plugin_manager, get_registry
from .store import DescriptionStore, lease_owner, make_key

log = logging.getLogger("actiongpt")
LEASE_TTL = 60.0  # seconds a claim lasts without renewal; renewed every third of it while we work
PARKED_POLL = 0.5  # seconds between looks at phrases another process is paying for
INTERRUPT_GRACE = 10.0  # seconds Ctrl-C waits for answers already in flight, to store them


def normalise_phrase(phrase: str, max_chars: int) -> str:
    if not isinstance(phrase, str):
        raise ActionGPTError(f"a phrase must be a string, got {type(phrase).__name__}")
    text = " ".join(phrase.split())
    if not text:
        raise ActionGPTError("empty phrase: give an action such as 'jump'")
    if len(text) > max_chars:
        raise ActionGPTError(f"phrase of {len(text)} characters is too long (limit expand.max_phrase_chars={max_chars}): {text[:40]!r}...")
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ActionGPTError(f"phrase {text[:40]!r} contains a control character ({bad!r}): give plain text")
    return text


def resolve_backend_name(cfg) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return get_registry().auto_backend(cfg)


@dataclass
class ExpandStats:
    phrases: int = 0
    cache_hits: int = 0  # served from the store (including phrases another process paid for meanwhile)
    expanded: int = 0  # paid for by this run
    requests: int = 0  # every request sent, failed attempts included
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
class Job:
    """One distinct phrase of a plan: its request, store key and the candidates gathered so far."""

    phrase: str
    request: Request
    key: str
    have: list = field(default_factory=list)
    chosen: list | None = None  # the k descriptions in use, once complete
    short: str = ""  # why it is not complete yet
    failure: str | None = None  # set when no further round can help (an error, attempts used up)
    rounds: int = 0
    _selected_for: int = -1  # len(have) when selection last ran
    _extra: int = 0  # what that selection asked for


@dataclass
class Plan:
    jobs: list  # one Job per distinct phrase, in first-seen order
    originals: dict  # normalised phrase -> the phrases as given
    stats: ExpandStats

    @property
    def todo(self) -> list:
        return [job for job in self.jobs if job.chosen is None]


class Expander:
    def __init__(self, cfg: DictConfig | None = None, **values):
        cfg = cfg if cfg is not None else load_config(**values)
        validate_choices(cfg)
        self.backend_name = resolve_backend_name(cfg)
        self.cfg = OmegaConf.merge(cfg, {})  # private copy: we fill in the resolved template
        self._backend: Backend | None = None
        self._store: DescriptionStore | None = None
        self._settings = None
        self._meta_base = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the parts, built on first use -------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            info = get_registry().backend(self.backend_name)
            self._backend = info.factory(self.cfg)
            if not self.cfg.template:
                self.cfg.template = self._backend.recommended_template
        return self._backend

    @property
    def settings(self):
        """The resolved config as a plain dataclass: what every hook receives as ``config``."""
        if self._settings is None:
            self.backend  # resolves the default template first
            self._settings = settings(self.cfg)
        return self._settings

    @property
    def params(self) -> SamplingParams:
        return self.settings.sampling

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

    @property
    def cacheable(self) -> bool:
        return self.backend.paid and self.cfg.store.enabled

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
        plan = self.plan(phrases)
        if progress:
            for job in plan.jobs:
                if job.chosen is not None:
                    progress(job.phrase, True)
        self.execute(plan, progress)
        return self.result(plan)

    def plan(self, phrases) -> Plan:
        """Validate and dedupe ``phrases`` and look each one up in the store; nothing is paid for."""
        originals: dict[str, list[str]] = {}
        for phrase in phrases:
            originals.setdefault(normalise_phrase(phrase, self.cfg.expand.max_phrase_chars), []).append(phrase)
        jobs = self._jobs(list(originals))
        if self.cacheable:
            stored = self.store.get_many(job.key for job in jobs)
            for job in jobs:
                job.have = list(stored.get(job.key, []))
        plan = Plan(jobs, originals, ExpandStats(phrases=len(originals)))
        for job in jobs:
            self.need(job)
        plan.stats.cache_hits = len(jobs) - len(plan.todo)
        return plan

    def need(self, job: Job) -> int:
        """More samples ``job`` needs (0: done, its k descriptions in ``job.chosen``).

        The count is checked first; the ``select_descriptions`` hook runs only when there are enough
        candidates, and once per set of candidates (a reranker embeds them: not again for nothing).
        """
        wanted = self.wanted
        if len(job.have) < wanted:
            job.chosen, job.short = None, f"only {len(job.have)} of {wanted} usable descriptions"
            return wanted - len(job.have)
        if job._selected_for != len(job.have):
            job._selected_for = len(job.have)
            job.chosen, job._extra = self._select(job)
        return job._extra

    def _select(self, job: Job):
        """(the k chosen, 0) or (None, samples still to ask for)."""
        s = self.settings
        if not self.backend.paid:
            return job.have[: s.k], 0
        chosen = get_plugin_manager().hook.select_descriptions(phrase=job.phrase, candidates=list(job.have), k=s.k,
                                                               config=s)
        if len(chosen) >= s.k:
            return list(chosen[: s.k]), 0
        # The selector rejected too many: ask for the missing ones, oversampled like the first request.
        job.short = f"only {len(chosen)} of {s.k} descriptions accepted by the selector (of {len(job.have)})"
        return None, math.ceil((s.k - len(chosen)) * s.expand.oversample)

    def record(self, job: Job, completion, stats: ExpandStats, owner: str | None = None) -> None:
        """Count, clean, dedupe and store one answer for ``job`` (releasing ``owner``'s claim on it)."""
        stats.requests += completion.requests
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens
        if completion.error:
            job.failure = completion.error
        texts = completion.texts
        if self.backend.paid:
            texts = get_plugin_manager().hook.clean_descriptions(
                phrase=job.phrase, texts=texts, config=self.settings, finish_reasons=completion.finish_reasons)
        if self.cacheable:
            job.have = self.store.append(
                job.key, phrase=job.phrase, descriptions=texts, raw=completion.raw, meta=self.row_meta(job),
                prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
                requests=completion.requests, release=owner,
            )
        else:
            job.have = job.have + texts

    def result(self, plan: Plan) -> ExpandResult:
        out, rows, stats = {}, [], plan.stats
        for job in plan.jobs:
            if job.chosen is not None:
                for original in plan.originals[job.phrase]:
                    out[original] = job.chosen
                rows.append({"phrase": job.phrase, "descriptions": job.chosen, "key": job.key, **self.row_meta(job)})
            elif job.phrase not in stats.failures:
                stats.failures[job.phrase] = job.failure or job.short
        return ExpandResult(out, stats, rows)

    def row_meta(self, job: Job) -> dict:
        """What a store row and a pack row record about how ``job``'s descriptions were made."""
        if self._meta_base is None:
            template = self.template
            identity = self.backend.identity()
            self._meta_base = {
                **identity, "backend": self.backend_name, "template": template.name,
                "template_version": template.version, "params": self.params_dict, "k": self.wanted,
                "provenance": f"{self.backend_name}:{identity['model']}",
            }
        return {**self._meta_base, "prompt": job.request.prompt.text}

    @property
    def params_dict(self) -> dict:
        return dict(vars(self.params))

    def known_phrases(self) -> list[str]:
        """Phrases this expander can serve without asking anyone: a pack's, else the store's."""
        table = getattr(self.backend, "table", None)
        if isinstance(table, dict):
            return list(table)
        if not self.cacheable or not store_path(self.cfg).exists():
            return []
        return self.store.phrases(self.backend_name)

    def _jobs(self, texts: list[str]) -> list[Job]:
        backend, template, s = self.backend, self.template, self.settings
        pm = get_plugin_manager()
        params, identity = self.params_dict, backend.identity()
        jobs = []
        for text in texts:
            prompt = pm.hook.build_prompt(template=template, phrase=text, config=s)
            key = make_key(
                backend=self.backend_name, identity=identity, template_name=template.name,
                template_version=template.version, template_fingerprint=template.fingerprint, prompt=prompt,
                params=params, k=self.wanted,
            )
            jobs.append(Job(text, Request(text, prompt), key, []))
        return jobs

    # -- execution -------------------------------------------------------------------------------
    def execute(self, plan: Plan, progress=None) -> None:
        """Ask the backend for every phrase of ``plan`` still short of k; store answers as they come."""
        todo = plan.todo
        if not todo:
            return
        if self.cfg.store.offline and self.backend.paid:
            raise MissingDescriptionsError([job.phrase for job in todo])
        if self.cacheable and not self.store.writable:
            raise ActionGPTError(f"description store {self.store.path} is read-only: use --offline for lookups, "
                                 "or set store.path to a writable file")
        self._run_async(_Run(self, todo, plan.stats, progress).main())


class _Run:
    """One execution: a scheduler that claims phrases, starts request rounds and collects them."""

    def __init__(self, expander: Expander, jobs: list, stats: ExpandStats, progress):
        self.ex, self.stats, self.progress = expander, stats, progress
        backend = expander.backend
        self.backend = backend
        self.leasing = expander.cacheable
        self.owner = lease_owner() if self.leasing else None
        self.rounds = 1 + (expander.settings.expand.attempts if backend.paid else 0)
        self.slots = max(1, min(expander.settings.expand.concurrency, backend.concurrency))
        self.size = max(1, backend.batch_size)
        self.ready = deque(jobs)
        self.parked: dict[str, Job] = {}
        self.running: dict[asyncio.Task, list] = {}
        self.fatal: BaseException | None = None
        self.stopping = 0  # Ctrl-C presses seen

    # The scheduler ---------------------------------------------------------------------------
    async def main(self) -> None:
        restore = self._catch_interrupts()
        renewed = parked_checked = time.monotonic()
        try:
            while self.ready or self.parked or self.running:
                while self.ready and len(self.running) < self.slots and not (self.fatal or self.stopping):
                    self._start([self.ready.popleft() for _ in range(min(self.size, len(self.ready)))])
                if self.fatal or self.stopping:
                    self._abandon_waiting()
                    if not self.running:
                        break
                if self.running:
                    done, _ = await asyncio.wait(self.running, timeout=PARKED_POLL,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        self._collect(task, self.running.pop(task))
                elif self.parked:
                    await asyncio.sleep(PARKED_POLL)
                now = time.monotonic()
                if self.leasing and now - renewed > LEASE_TTL / 3:
                    self.ex.store.renew(self.owner, LEASE_TTL)
                    renewed = now
                if self.parked and now - parked_checked >= PARKED_POLL:
                    self._check_parked()
                    parked_checked = now
        finally:
            restore()
            if self.leasing and (self.fatal or self.stopping):
                self.ex.store.release([job.key for jobs in self.running.values() for job in jobs], self.owner)
        if self.fatal is not None:
            raise self.fatal
        if self.stopping:
            raise KeyboardInterrupt

    def _start(self, batch: list) -> None:
        """Claim the batch's phrases (re-reading the store) and start a request round for those we hold."""
        if self.leasing:
            batch = self._claim(batch)
        if batch:
            self.running[asyncio.ensure_future(self._round(batch))] = batch

    def _claim(self, jobs: list) -> list:
        """The jobs whose store key we now hold; the others are done (stored meanwhile) or parked."""
        claim = self.ex.store.claim([job.key for job in jobs], self.owner, LEASE_TTL)
        mine, done = [], []
        for job in jobs:
            if job.key in claim.current:
                job.have = list(claim.current[job.key])
            if self.ex.need(job) == 0:  # stored meanwhile, by another process or an earlier round
                done.append(job)
            elif job.key in claim.mine:
                mine.append(job)
            else:
                self.parked[job.key] = job
        if done:
            self.ex.store.release([job.key for job in done if job.key in claim.mine], self.owner)
            for job in done:
                self._finish(job, paid_here=job.rounds > 0)
        return mine

    def _check_parked(self) -> None:
        """Phrases another process is paying for: done when their answer is in, ours if it gave up."""
        jobs = list(self.parked.values())
        self.parked.clear()
        self.ready.extendleft(reversed(self._claim(jobs)))

    async def _round(self, batch: list) -> None:
        """One request round for ``batch``: phrases needing the same number of samples go together."""
        ex, pm = self.ex, get_plugin_manager()
        by_need: dict[int, list] = {}
        for job in batch:
            by_need.setdefault(ex.need(job), []).append(job)
        for n, jobs in sorted(by_need.items()):
            completions = await pm.hook.query_llm(backend=self.backend, requests=[j.request for j in jobs], k=n,
                                                  params=ex.params)
            for job, completion in zip(jobs, completions):
                ex.record(job, completion, self.stats, self.owner)
                job.rounds += 1

    def _collect(self, task: asyncio.Task, batch: list) -> None:
        error = None if task.cancelled() else task.exception()
        if isinstance(error, FatalBackendError):
            self.fatal = self.fatal or error
        elif isinstance(error, ActionGPTError):
            self.stats.requests += getattr(error, "requests", 0)  # a refused request was still sent
            for job in batch:
                job.failure = job.failure or str(error)
        elif error is not None:
            self.fatal = self.fatal or error
        if self.leasing and (error is not None or task.cancelled()):
            self.ex.store.release([job.key for job in batch], self.owner)
        for job in batch:
            if self.ex.need(job) == 0:
                self._finish(job, paid_here=True)
            elif job.failure or job.rounds >= self.rounds or error is not None or task.cancelled():
                self._finish(job, paid_here=False)
            else:
                self.ready.append(job)  # another round, re-claimed and re-read first

    def _finish(self, job: Job, paid_here: bool) -> None:
        ok = job.chosen is not None
        if ok:
            self.stats.failures.pop(job.phrase, None)
            if paid_here:
                self.stats.expanded += 1
            else:
                self.stats.cache_hits += 1
        else:
            self.stats.failures[job.phrase] = job.failure or job.short
        if self.progress and not self.fatal:
            self.progress(job.phrase, ok)

    def _abandon_waiting(self) -> None:
        """Stop: phrases not yet sent stay unpaid (a rerun asks for them)."""
        self.ready.clear()
        self.parked.clear()

    # Ctrl-C: finish storing what is already paid for ------------------------------------------
    def _catch_interrupts(self):
        loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        try:
            loop.add_signal_handler(signal.SIGINT, self._interrupted)
        except (NotImplementedError, RuntimeError, ValueError):  # not on this platform or loop
            return lambda: None
        return lambda: loop.remove_signal_handler(signal.SIGINT)

    def _interrupted(self) -> None:
        self.stopping += 1
        if self.stopping == 1 and self.running:
            in_flight = sum(len(b) for b in self.running.values())
            log.warning("interrupted: storing the answers to %d phrase(s) already asked for (up to %.0f s); "
                        "Ctrl-C again to quit now", in_flight, INTERRUPT_GRACE)
            asyncio.get_running_loop().call_later(INTERRUPT_GRACE, self._cancel_running)
        else:
            self._cancel_running()

    def _cancel_running(self) -> None:
        for task in self.running:
            task.cancel()
