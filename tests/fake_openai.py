"""An OpenAI-compatible HTTP server for tests and benchmarks (stdlib only).

    with FakeOpenAI(latency=0.2) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
        server.add_faults(Fault.http(429, retry_after=0.3), "drop", "malformed")

Serves POST /v1/chat/completions and /v1/completions (n choices, usage) and GET /v1/models.
Faults are consumed in order, one per completion request; ``on_request(record)`` may return a
fault as well. Every request is recorded without its Authorization header, which is kept apart
in ``authorizations`` so tests can check a key was sent without it landing in the records.

The Batch API too: POST /v1/files (multipart, purpose "batch"), GET /v1/files/{id}[/content],
POST /v1/batches, GET /v1/batches[/{id}], POST /v1/batches/{id}/cancel. A batch completes on the
``batch_polls``-th retrieve once ``batch_delay`` seconds have passed (never while ``batch_hold``;
it fails validation with ``batch_error`` when set);
its lines are then answered like live requests, with ``on_batch_line(line)`` choosing a Fault per
line: "status" goes to the error file, "drop" leaves the line unanswered (the batch then expires),
"empty"/"fewer"/"no_choices" shape the reply. Batch and file calls are recorded with a "method".

Modes that reproduce real local servers:
- ``serial=True``: ONE request at a time, first come first served (llama.cpp's server, Ollama):
  each completion request waits in a global queue, then occupies the server for ``latency``
  seconds, even when its client has already given up (the answer then goes into a closed socket
  and is counted in ``abandoned``);
- ``ignore_n=True``: always one choice, whatever ``n`` asked for;
- ``seeded=True``: a choice's text depends only on the prompt and the request's ``seed`` (with no
  seed, on a fresh random draw), as a sampling server's does: equal seeds give equal answers;
- ``models=[...]``: what GET /v1/models lists (default: ``[model]``);
- ``finish_reason``: what every choice reports ("stop"; "length" for an answer cut by max_tokens).
``Fault.http(429, retry_after=600)`` is a long Retry-After, ``retry_after_date=True`` sends it as an
HTTP date; ``closed_port_url()`` is a URL where nothing listens (connection refused).

Run as a script for manual tries: ``python tests/fake_openai.py --port 0 --latency 0.2``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import random
import re
import select
import socket
import threading
import time
from dataclasses import dataclass
from email.parser import BytesParser
from email.utils import formatdate
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_MODEL = "fake-model"
MOVES = (
    "bends the knees, shifts the weight onto the left leg",
    "raises both arms above the head, leans the torso forward",
    "turns the hips to the right, swings the right arm",
    "steps forward with the right foot, lowers the shoulders",
    "keeps the back straight, lifts the left knee",
)


@dataclass
class Fault:
    """What to do instead of (or to) a normal reply.

    kind: "status" (HTTP error with an OpenAI-style error body), "drop" (close the socket
    without replying), "timeout" (sleep ``seconds`` before replying, longer than the client's
    timeout), "malformed" (200 with an invalid JSON body), "no_choices" (valid JSON without
    choices), "fewer" (only ``choices`` choices), "empty" (every choice has empty content).
    """

    kind: str
    status: int = 500
    retry_after: float | None = None  # seconds, sent as Retry-After
    retry_after_ms: float | None = None  # sent as retry-after-ms
    retry_after_date: bool = False  # send Retry-After as an HTTP date that far in the future
    seconds: float = 5.0
    choices: int = 1
    message: str | None = None  # the error body's message for "status"

    @classmethod
    def http(cls, status: int, retry_after=None, retry_after_ms=None, message=None, retry_after_date=False) -> "Fault":
        return cls("status", status=status, retry_after=retry_after, retry_after_ms=retry_after_ms, message=message,
                   retry_after_date=retry_after_date)

    @classmethod
    def parse(cls, spec) -> "Fault":
        """Accept a Fault, a kind name, or an HTTP status as int or digits ("429")."""
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, int) or str(spec).isdigit():
            return cls("status", status=int(spec))
        return cls(str(spec))


def _prompt_text(path: str, body: dict) -> str:
    if path.endswith("/chat/completions"):
        users = [m.get("content") or "" for m in body.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""
    prompt = body.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) and prompt else str(prompt)


def phrase_of(prompt: str) -> str:
    """The action phrase inside a rendered prompt (the built-in templates' wordings)."""
    for pattern in (r"action:?\s+(.+?)(?:\.\s|\s+in details?\s*$|$)", r"when they (.+?)\.?\s*$"):
        m = re.search(pattern, prompt.strip().splitlines()[-1] if prompt.strip() else "")
        if m:
            return m.group(1).strip()
    return " ".join(prompt.split()[-3:]) or "the action"


def default_content(path: str, body: dict, index: int) -> str:
    """Deterministic in the prompt and choice index; long enough to pass cleaning."""
    phrase = phrase_of(_prompt_text(path, body))
    return f"The person {MOVES[index % len(MOVES)]} and moves the whole body to {phrase} (sample {index})."


def seeded_content(path: str, body: dict, index: int) -> str:
    """Deterministic in the prompt and the request's seed; a random draw when no seed is given."""
    seed = body.get("seed")
    draw = random.randrange(10**9) if seed is None else int(seed) * 1000 + index
    phrase = phrase_of(_prompt_text(path, body))
    return f"The person {MOVES[draw % len(MOVES)]} and moves the whole body to {phrase} (draw {draw})."


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _words(text: str) -> int:
    return len(str(text).split())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real API servers do
    disable_nagle_algorithm = True  # else small replies can stall ~40 ms on delayed ACKs
    server: "_Server"

    def log_message(self, *args):  # quiet: tests read the records instead
        pass

    def _send(self, status: int, payload, headers: dict | None = None, content_type="application/json") -> bool:
        """Whether the reply reached the client (False: it had hung up, e.g. after its timeout)."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:  # the client gave up (timeout): nothing to do
            self.close_connection = True
            return False

    def _client_gone(self) -> bool:
        """Whether the client hung up while we worked (it timed out): readable with nothing to read."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            fake = self.server.fake
            models = fake.models if fake.models is not None else [fake.model]
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in models]})
        elif self.path.startswith(("/v1/files", "/v1/batches")):
            self._batch_api("GET", b"")
        else:
            self._send(404, _error(f"unknown path {self.path}", "not_found"))

    def do_POST(self):
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.startswith(("/v1/files", "/v1/batches")):
            return self._batch_api("POST", raw)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        path = self.path.split("?")[0].rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        record = {"path": path, "body": body, "headers": headers, "time": time.monotonic()}
        fault = fake._begin(record, self.headers.get("Authorization"))
        try:
            if fake.serial and path.endswith("completions"):
                with fake._serving():  # queued, then the server is this request's alone
                    if fake.latency:
                        fake._stopping.wait(fake.latency)
                    fake.served += 1
            elif fake.latency:
                fake._stopping.wait(fake.latency)
            if path.endswith("completions") and (self._client_gone() or not self._reply(fake, path, body, fault)):
                with fake._lock:
                    fake.abandoned += 1
                self.close_connection = True
            elif not path.endswith("completions"):
                self._reply(fake, path, body, fault)
        finally:
            fake._end()

    def _reply(self, fake, path, body, fault):
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return self._send(404, _error(f"unknown path {path}", "not_found"))
        if body is None:
            return self._send(400, _error("request body is not valid JSON", "invalid_request_error"))
        if fault is not None:
            if fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = (formatdate(time.time() + fault.retry_after, usegmt=True)
                                              if fault.retry_after_date else str(fault.retry_after))
                if fault.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(fault.retry_after_ms)
                message = fault.message or f"fake error {fault.status}"
                return self._send(fault.status, _error(message, "fake_error"), headers)
            if fault.kind == "drop":
                self.close_connection = True
                return True  # not the client's doing
            if fault.kind == "timeout":
                fake._stopping.wait(fault.seconds)
            elif fault.kind == "malformed":
                return self._send(200, b'{"id": "chatcmpl-broken", "choices": [')
        return self._send(200, fake.reply(path, body, fault))

    def _batch_api(self, method: str, raw: bytes) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        record = {"path": path, "method": method, "body": None, "headers": headers, "time": time.monotonic()}
        with fake._lock:
            fake.requests.append(record)
            fake.authorizations.append(self.headers.get("Authorization"))
        status, payload, content_type = fake.batch_api(method, path, parse_qs(url.query), raw,
                                                       self.headers.get("Content-Type") or "", record)
        self._send(status, payload, content_type=content_type)


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # benchmarks open dozens of connections at once
    fake: "FakeOpenAI"

    def handle_error(self, request, client_address):
        pass  # dropped client connections are expected here


class FakeOpenAI:
    def __init__(self, latency: float = 0.0, model: str = DEFAULT_MODEL, content=None, host="127.0.0.1", port=0,
                 serial: bool = False, ignore_n: bool = False, seeded: bool = False, models=None):
        self.latency = latency
        self.model = model
        self.models = models  # GET /v1/models lists these (None: just ``model``)
        # content(path, body, index) -> str; the reply text of choice ``index``
        self.content = content or (seeded_content if seeded else default_content)
        self.serial = serial
        self.ignore_n = ignore_n
        self.finish_reason = "stop"
        self.served = 0  # completion requests the serial server computed
        self.abandoned = 0  # replies that found the client gone (it had timed out)
        self._queue = threading.Condition()
        self._tickets = itertools.count()
        self._now_serving = 0
        # on_request(record) -> Fault | str | int | None, consulted when the fault queue is empty
        self.on_request = None
        self.faults: collections.deque[Fault] = collections.deque()
        self.requests: list[dict] = []
        # Batch API state: files[id] = {"object": file object, "data": bytes}; batches[id] = batch object
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_polls = 1  # retrieves before a batch completes
        self.batch_delay = 0.0  # and seconds after its creation
        self.batch_hold = False  # True: batches stay in_progress
        self.on_batch_line = None  # on_batch_line(line: dict) -> Fault | str | int | None
        self.batch_error = None  # {"code", "message"}: validation fails every batch with it
        self.batch_lines: list[dict] = []  # every input line answered so far
        self.authorizations: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = threading.Event()
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "FakeOpenAI":
        self._stopping.clear()
        self._server = _Server((self._host, self._port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._stopping.set()  # wakes handlers sleeping on latency or a timeout fault
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    # scripting
    def add_faults(self, *specs) -> None:
        with self._lock:
            self.faults.extend(Fault.parse(s) for s in specs)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if path is None or r["path"].endswith(path))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.authorizations.clear()
            self.batch_lines.clear()
            self.faults.clear()
            self.max_in_flight = self.in_flight
            self.served = self.abandoned = 0

    def _begin(self, record: dict, authorization: str | None) -> Fault | None:
        with self._lock:
            self.requests.append(record)
            self.authorizations.append(authorization)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if record["body"] is None or not record["path"].endswith("completions"):
                return None
            if self.faults:
                return self.faults.popleft()
        hook = self.on_request
        spec = hook(record) if hook else None
        return None if spec is None else Fault.parse(spec)

    def _end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextlib.contextmanager
    def _serving(self):
        """First come, first served: one request at a time (serial mode)."""
        with self._queue:
            ticket = next(self._tickets)
            while ticket != self._now_serving and not self._stopping.is_set():
                self._queue.wait(0.5)
        try:
            yield
        finally:
            with self._queue:
                self._now_serving += 1
                self._queue.notify_all()

    # replies
    def reply(self, path: str, body: dict, fault: Fault | None = None) -> dict:
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        if fault is not None and fault.kind == "fewer":
            n = min(n, fault.choices)
        texts = ["" if fault is not None and fault.kind == "empty" else self.content(path, body, i) for i in range(n)]
        chat = path.endswith("/chat/completions")
        if chat:
            prompt_words = sum(_words(m.get("content") or "") for m in body.get("messages", []))
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                 "finish_reason": self.finish_reason}
                for i, t in enumerate(texts)
            ]
        else:
            prompt_words = _words(_prompt_text(path, body))
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": self.finish_reason}
                       for i, t in enumerate(texts)]
        completion_words = sum(_words(t) for t in texts)
        reply = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-fake{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion_words,
                "total_tokens": prompt_words + completion_words,
            },
        }
        if fault is not None and fault.kind == "no_choices":
            del reply["choices"]
        return reply


    # batches
    def batch_api(self, method: str, path: str, query: dict, raw: bytes, content_type: str, record: dict):
        """(status, payload, content type) for a Files or Batches API call."""
        parts = path.split("/")[2:]  # ["files", id, "content"] or ["batches", id, "cancel"]
        with self._lock:
            if method == "POST" and parts == ["files"]:
                return self._upload(raw, content_type, record)
            if method == "GET" and len(parts) in (2, 3) and parts[0] == "files":
                file = self.files.get(parts[1])
                if file is None or parts[2:] not in ([], ["content"]):
                    return 404, _error(f"no file {parts[1]!r}", "not_found"), "application/json"
                if parts[2:] == ["content"]:
                    return 200, file["data"], "application/octet-stream"
                return 200, file["object"], "application/json"
            if method == "POST" and parts == ["batches"]:
                body = _json_or_none(raw)
                record["body"] = body
                return self._create_batch(body or {})
            if method == "GET" and parts == ["batches"]:
                data = [_public(b) for b in sorted(self.batches.values(), key=lambda b: b["_created"], reverse=True)]
                limit = int((query.get("limit") or ["20"])[0])
                return 200, {"object": "list", "data": data[:limit], "has_more": False,
                             "first_id": data[0]["id"] if data else None,
                             "last_id": data[min(limit, len(data)) - 1]["id"] if data else None}, "application/json"
            batch = self.batches.get(parts[1]) if len(parts) >= 2 and parts[0] == "batches" else None
            if batch is None:
                return 404, _error(f"unknown path {path}", "not_found"), "application/json"
            if method == "GET" and len(parts) == 2:
                self._advance(batch)
                return 200, _public(batch), "application/json"
            if method == "POST" and parts[2:] == ["cancel"] and batch["status"] in ("validating", "in_progress"):
                batch.update(status="cancelled", cancelled_at=int(time.time()))
                return 200, _public(batch), "application/json"
            return 404, _error(f"unknown path {path}", "not_found"), "application/json"

    def _add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        file_id = f"file-fake{next(self._ids)}"
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[file_id] = {"object": obj, "data": data}
        return obj

    def _upload(self, raw: bytes, content_type: str, record: dict):
        if not content_type.startswith("multipart/form-data"):
            return 400, _error("expected multipart/form-data", "invalid_request_error"), "application/json"
        message = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        purpose = (fields.get("purpose", (None, b""))[1] or b"").decode()
        if "file" not in fields or purpose != "batch":
            return 400, _error("need a file and purpose=batch", "invalid_request_error"), "application/json"
        filename, data = fields["file"]
        record["body"] = {"filename": filename, "purpose": purpose, "bytes": len(data)}
        return 200, self._add_file(data, filename or "upload", purpose), "application/json"

    def _create_batch(self, body: dict):
        file = self.files.get(body.get("input_file_id"))
        endpoint = body.get("endpoint")
        if file is None or endpoint not in ("/v1/chat/completions", "/v1/completions") \
                or body.get("completion_window") != "24h":
            return 400, _error("need a known input_file_id, a completions endpoint and completion_window=24h",
                               "invalid_request_error"), "application/json"
        now = int(time.time())
        batch = {
            "id": f"batch_fake{next(self._ids)}", "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": file["object"]["id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": body.get("metadata"),
            "_polls": 0, "_created": time.monotonic(),
        }
        self.batches[batch["id"]] = batch
        return 200, _public(batch), "application/json"

    def _advance(self, batch: dict) -> None:
        """One retrieve: validate on the first, finish once enough polls and time have passed."""
        batch["_polls"] += 1
        if batch["status"] == "validating":
            lines, problem = _parse_batch_input(self.files[batch["input_file_id"]]["data"], batch["endpoint"])
            problem = problem or (dict(self.batch_error, line=None) if self.batch_error else None)
            if problem:
                batch.update(status="failed", failed_at=int(time.time()),
                             errors={"object": "list", "data": [problem]})
                return
            batch.update(status="in_progress", in_progress_at=int(time.time()), _lines=lines)
            batch["request_counts"]["total"] = len(lines)
        if batch["status"] != "in_progress" or self.batch_hold:
            return
        if batch["_polls"] < self.batch_polls or time.monotonic() - batch["_created"] < self.batch_delay:
            return
        outputs, errors, dropped = [], [], 0
        for i, line in enumerate(batch["_lines"]):
            spec = self.on_batch_line(line) if self.on_batch_line else None
            fault = None if spec is None else Fault.parse(spec)
            self.batch_lines.append(line)
            if fault is not None and fault.kind == "drop":
                dropped += 1
                continue
            out = {"id": f"batch_req_{batch['id']}_{i}", "custom_id": line["custom_id"], "error": None}
            if fault is not None and fault.kind == "status":
                body = _error(fault.message or f"fake error {fault.status}", "fake_error")
                out["response"] = {"status_code": fault.status, "request_id": f"req_{i}", "body": body}
                errors.append(out)
            else:
                out["response"] = {"status_code": 200, "request_id": f"req_{i}",
                                   "body": self.reply(line["url"], line["body"], fault)}
                outputs.append(out)
        now = int(time.time())
        if outputs:
            batch["output_file_id"] = self._add_file(_jsonl(outputs), "batch_output.jsonl", "batch_output")["id"]
        if errors:
            batch["error_file_id"] = self._add_file(_jsonl(errors), "batch_errors.jsonl", "batch_output")["id"]
        batch["request_counts"].update(completed=len(outputs), failed=len(errors))
        batch.update(status="expired" if dropped else "completed", finalizing_at=now,
                     **{("expired_at" if dropped else "completed_at"): now})

    def batch_requests(self, method: str | None = None, path: str = "") -> list[dict]:
        """Recorded Files/Batches API calls (``path`` is a prefix, e.g. "/v1/batches")."""
        with self._lock:
            return [r for r in self.requests if "method" in r and (method is None or r["method"] == method)
                    and r["path"].startswith(path)]


def _json_or_none(raw: bytes):
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        return None


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _parse_batch_input(data: bytes, endpoint: str):
    """(lines, None) or (None, error) like the API's validation: JSON lines, unique custom_id, one endpoint."""
    lines, seen = [], set()
    for number, text in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        line = _json_or_none(text.encode())
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            return None, {"code": "invalid_json_line", "message": f"line {number} is not a request", "line": number}
        if line.get("url") != endpoint or line.get("method") != "POST":
            return None, {"code": "mismatched_endpoint", "message": f"line {number}: url is not {endpoint}",
                          "line": number}
        if line.get("custom_id") in seen or not line.get("custom_id"):
            return None, {"code": "duplicate_custom_id", "message": f"line {number}: custom_id missing or repeated",
                          "line": number}
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines:
        return None, {"code": "empty_file", "message": "the input file has no requests", "line": None}
    return lines, None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI-compatible API on 127.0.0.1.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--serial", action="store_true", help="one request at a time, the rest queued (llama.cpp)")
    parser.add_argument("--ignore-n", action="store_true", help="always one choice, whatever n asks for")
    parser.add_argument("--seeded", action="store_true", help="answers depend only on the prompt and the seed")
    args = parser.parse_args(argv)
    with FakeOpenAI(latency=args.latency, model=args.model, host=args.host, port=args.port, serial=args.serial,
                    ignore_n=args.ignore_n, seeded=args.seeded) as server:
        print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
