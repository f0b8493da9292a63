"""OpenAI Batch API for whole datasets: `actiongpt expand --file labels.txt --batch`.

Half the price of live requests, results within 24 h. Each phrase the store lacks becomes one JSONL
request whose custom_id is its store key, so a result lands exactly where a live request's would.
A submission is recorded in the store before the batch is created (and its id sent as the batch's
metadata): a rerun after Ctrl-C or a crash finds the open batch, even a half-created one, and resumes
polling it; keys in an open batch are never submitted again. Results are cleaned with the
`clean_descriptions` hook and written with their token usage in one transaction per batch.
"""
from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager

import dataclasses
from pathlib import Path
from typing import List, Optional

from .backends.openai_backend import OpenAIBackend
from .errors import ActionGPTError, FatalBackendError, MissingDescriptionsError, redact
from .expander import Expander, ExpandResult, Plan
from .hookspecs import hookimpl
from .lazy import openai
from .plugins import get_plugin_manager

MAX_REQUESTS = 50_000  # the API's limit per batch file
TERMINAL = ("completed", "failed", "expired", "cancelled")
METADATA_KEY = "actiongpt_submission"


class BatchRunner:
    def __init__(self, expander: Expander, poll_interval: float = 30.0, log=None, sleep=time.sleep):
        backend = expander.backend
        if not isinstance(backend, OpenAIBackend):
            raise ActionGPTError(
                f"--batch needs the openai backend (the OpenAI Batch API), not {expander.backend_name!r}")
        if not expander.cfg.store.enabled:
            raise ActionGPTError(
                "--batch needs the description store (store.enabled=true): results are collected into it")
        self.expander, self.backend = expander, backend
        self.endpoint = "/v1/chat/completions" if backend.api == "chat" else "/v1/completions"
        self.poll_interval = poll_interval
        self.log = log or (lambda message: None)
        self.sleep = sleep
        self._templates: dict = {}
        self.client = None

    # -- the run -------------------------------------------------------------------------------
    def run(self, phrases) -> ExpandResult:
        ex = self.expander
        plan = ex.plan(phrases)
        todo = {job.key: job for job in plan.todo}
        if ex.cfg.store.offline and todo:
            raise MissingDescriptionsError([job.phrase for job in todo.values()])
        if not todo:
            return ex.result(plan)
        self.client = openai.OpenAI(**self.backend.client_options(), max_retries=self.backend.max_retries)
        try:
            mine = {job.key: job.phrase for job in plan.jobs}
            opened = self._reconcile(ex.store.open_batches())
            pending = {r["key"] for b in opened for r in b["requests"]}
            ours = [b for b in opened if any(r["key"] in mine for r in b["requests"])]
            if len(ours) < len(opened):
                others = len(opened) - len(ours)
                self.log(f"{others} other open batch(es) in the store are for other phrases; left alone")
            for b in ours:
                self.log(f"resuming batch {b['batch_id']} ({len(b['requests'])} requests, {b['status']})")
            submit = [job for key, job in todo.items() if key not in pending]
            for start in range(0, len(submit), MAX_REQUESTS):
                ours.append(self._submit(submit[start: start + MAX_REQUESTS]))
            self._wait(ours, plan, mine)
        finally:
            self.client.close()
        self._refresh(plan, todo)
        return ex.result(plan)

    def _refresh(self, plan: Plan, todo: dict) -> None:
        """Re-read what the batches stored; count what is now complete."""
        ex, stats = self.expander, plan.stats
        stored = ex.store.get_many(todo)
        for key, job in todo.items():
            job.have = list(stored.get(key, []))
            if ex.need(job) == 0:
                stats.failures.pop(job.phrase, None)
                stats.expanded += 1
            elif job.phrase not in stats.failures:
                stats.failures[job.phrase] = f"{job.short}; run again to submit the rest"

    # -- submitting --------------------------------------------------------------------------
    def _submit(self, chunk) -> dict:
        ex = self.expander
        requests = [{"key": job.key, "phrase": job.phrase, "n": ex.need(job), "meta": ex.row_meta(job)}
                    for job in chunk]
        data = "".join(
            json.dumps({"custom_id": job.key, "method": "POST", "url": self.endpoint,
                        "body": self.backend.request_body(job.request, ex.need(job), ex.params)},
                       ensure_ascii=False) + "\n"
            for job in chunk
        ).encode("utf-8")
        submission = uuid.uuid4().hex
        ex.store.add_batch(submission, self.endpoint, requests)  # before anything exists remotely
        try:
            upload = self._call(self.client.files.create, file=("actiongpt-batch.jsonl", data, "application/jsonl"),
                                purpose="batch")
        except BaseException:
            ex.store.drop_batch(submission)  # no batch without its input file
            raise
        # Cut off midway, this call leaves the record "submitting": the next run looks for the batch by metadata.
        with self._errors():
            try:
                batch = self.client.batches.create(input_file_id=upload.id, endpoint=self.endpoint,
                                                   completion_window="24h", metadata={METADATA_KEY: submission})
            except openai.APIStatusError:
                ex.store.drop_batch(submission)  # refused: no batch was created
                raise
        ex.store.set_batch(submission, batch.status, batch.id)
        self.log(f"submitted batch {batch.id}: {len(chunk)} requests")
        return {"submission": submission, "batch_id": batch.id, "status": batch.status, "requests": requests}

    def _reconcile(self, opened: list[dict]) -> list[dict]:
        """Half-created submissions (killed between recording and creating): adopt the batch or forget them."""
        out = []
        for b in opened:
            if b["batch_id"] is None:
                found = self._find_remote(b)
                if found is None:
                    self.expander.store.drop_batch(b["submission"])
                    continue
                self.expander.store.set_batch(b["submission"], found.status, found.id)
                b = {**b, "batch_id": found.id, "status": found.status}
            out.append(b)
        return out

    def _find_remote(self, record: dict):
        for batch in self._call(self.client.batches.list, limit=100):  # newest first, pages on demand
            if (batch.metadata or {}).get(METADATA_KEY) == record["submission"]:
                return batch
            if batch.created_at < record["created_at"] - 3600:  # clocks differ; an hour is plenty
                return None
        return None

    # -- waiting and collecting ------------------------------------------------------------------
    def _wait(self, waiting: list[dict], plan: Plan, mine: dict) -> None:
        waiting = list(waiting)
        shown = {}
        while waiting:
            for record in list(waiting):
                batch = self._call(self.client.batches.retrieve, record["batch_id"])
                counts, line = batch.request_counts, f"batch {batch.id}: {batch.status}"
                if counts:
                    line += f" ({counts.completed + counts.failed}/{counts.total} done, {counts.failed} failed)"
                if shown.get(batch.id) != line:
                    self.log(line)
                    shown[batch.id] = line
                if batch.status != record["status"]:
                    self.expander.store.set_batch(record["submission"], batch.status)
                    record["status"] = batch.status
                if batch.status in TERMINAL:
                    self._collect(record, batch, plan.stats, mine)
                    waiting.remove(record)
            if waiting:
                self.sleep(self.poll_interval)

    def _collect(self, record: dict, batch, stats, mine: dict) -> None:
        lines = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                text = self._call(self.client.files.content, file_id).text
                lines += [json.loads(line) for line in text.splitlines() if line.strip()]
        wanted = {r["key"]: r for r in record["requests"]}
        results, seen, failed = [], set(), 0
        for line in lines:
            request = wanted.get(line.get("custom_id"))
            if request is None:
                continue
            seen.add(request["key"])
            stats.requests += 1
            body, error = self._result(line)
            if error is not None:
                failed += 1
                if request["key"] in mine:
                    stats.failures[request["phrase"]] = f"batch request failed: {error}"
                continue
            usage = body.get("usage") or {}
            prompt_tokens, completion_tokens = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            stats.prompt_tokens += prompt_tokens
            stats.completion_tokens += completion_tokens
            finish_reasons = [c.get("finish_reason") for c in body["choices"]]
            if self.endpoint == "/v1/chat/completions":
                texts = [((c.get("message") or {}).get("content") or "") for c in body["choices"]]
            else:
                texts = [c.get("text") or "" for c in body["choices"]]
            texts = get_plugin_manager().hook.clean_descriptions(
                phrase=request["phrase"], texts=texts, config=self._config_for(request["meta"]),
                finish_reasons=finish_reasons)
            results.append(dict(key=request["key"], phrase=request["phrase"], descriptions=texts, raw=body,
                                meta=request["meta"], prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, requests=1))
        missing = [r for key, r in wanted.items() if key not in seen]
        if missing:
            reason = self._batch_reason(batch)
            for r in missing:
                if r["key"] in mine:
                    stats.failures[r["phrase"]] = reason
        self.expander.store.collect_batch(record["submission"], batch.status, results)
        self.log(f"collected batch {batch.id}: {len(results)} results, {failed + len(missing)} failed")

    def _result(self, line: dict):
        """(response body, None) for a usable result line, else (None, why not)."""
        response = line.get("response") or {}
        body = response.get("body")
        status = response.get("status_code")
        error = line.get("error")
        if not error and status == 200 and isinstance(body, dict) and isinstance(body.get("choices"), list):
            return body, None
        message = (error or {}).get("message") if isinstance(error, dict) else None
        if message is None and isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = body["error"].get("message")
        return None, redact(f"HTTP {status}: {message or 'malformed result'}")

    def _batch_reason(self, batch) -> str:
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            detail = "; ".join(e.message or e.code or "" for e in errors[:3]) or "no reason given"
            return redact(f"batch {batch.id} failed: {detail}")
        if batch.status in ("expired", "cancelled"):
            return f"batch {batch.id} {batch.status} before this request ran"
        return f"no result for this request in batch {batch.id}"

    def _config_for(self, meta: dict):
        """The config to clean with: the template the request was made with (it sets max_words)."""
        name = f"{meta['template']}@{meta['template_version']}"
        if name not in self._templates:
            self._templates[name] = dataclasses.replace(self.expander.settings, template=name)
        return self._templates[name]

    # -- errors ----------------------------------------------------------------------------------
    def _call(self, fn, *args, **kwargs):
        """One Batch/Files API call; the client retries transient errors itself."""
        with self._errors():
            return fn(*args, **kwargs)

    @contextmanager
    def _errors(self):
        """API errors as one-line, key-free ActionGPTErrors."""
        try:
            yield
        except openai.APIStatusError as exc:
            message = exc.body.get("message") if isinstance(exc.body, dict) else None
            error = FatalBackendError if exc.status_code in (401, 403, 404) else ActionGPTError
            text = f"OpenAI Batch API: HTTP {exc.status_code}: {message or exc.message}"
            raise error(redact(text)) from None
        except openai.APIConnectionError as exc:
            raise ActionGPTError(redact(
                f"OpenAI Batch API at {self.client.base_url} unreachable ({exc.__cause__ or exc}); "
                "run again to resume")) from None


# -- the `actiongpt batch` command (this module is a plugin: entry point `batch`) ----------------------
@hookimpl
def register_commands(cli):
    import typer

    from . import cli as core

    @cli.command()
    def batch(
        phrases: Optional[List[str]] = core.PhrasesArg,
        file: Optional[Path] = core.FileOpt,
        out: Optional[Path] = core.OutOpt,
        as_json: bool = core.JsonOpt,
        k: Optional[int] = core.KOpt,
        backend: Optional[str] = core.BackendOpt,
        model: Optional[str] = core.ModelOpt,
        template: Optional[str] = core.TemplateOpt,
        offline: bool = core.OfflineOpt,
        poll_interval: float = typer.Option(30.0, "--poll-interval", min=0.0,
                                            help="Seconds between batch status checks."),
        config: Optional[Path] = core.ConfigOpt,
        sets: Optional[List[str]] = core.SetOpt,
    ):
        """Expand through the OpenAI Batch API: half price, results within 24 h; run again to resume."""
        request = core.ExpandRequest.from_options(phrases, file, out, config=config, sets=sets, k=k,
                                                  backend=backend, model=model, template=template, offline=offline)
        with Expander(request.cfg) as expander:
            runner = BatchRunner(expander, poll_interval=poll_interval, log=lambda line: typer.echo(line, err=True))
            result = runner.run(request.phrases)
            core.write_outputs(request, result, expander)
        core.report(request, result, as_json)
