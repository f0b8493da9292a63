"""SQLite description store: every paid LLM result is written the moment it arrives.

Rows are keyed by a hash of everything that shapes the output (backend, model, template identity,
rendered prompt, sampling parameters, k). Descriptions accumulate per key, so a partial answer
(2 of 4 usable) is kept and only the rest is asked for after a crash. WAL mode plus BEGIN IMMEDIATE
lets several processes expand into one store at once.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import ActionGPTError

SCHEMA = """
CREATE TABLE IF NOT EXISTS descriptions (
    key TEXT PRIMARY KEY,
    phrase TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    template_version TEXT NOT NULL,
    prompt TEXT NOT NULL,
    params TEXT NOT NULL,
    k INTEGER NOT NULL,
    descriptions TEXT NOT NULL,
    raw TEXT NOT NULL DEFAULT '[]',
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    provenance TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS descriptions_phrase ON descriptions(phrase);
CREATE TABLE IF NOT EXISTS batches (
    submission TEXT PRIMARY KEY,  -- ours, recorded (and sent as batch metadata) before the batch exists
    batch_id TEXT,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,  -- submitting, then the API's status
    requests TEXT NOT NULL,  -- JSON [{"key", "phrase", "n", "meta"}]: what each custom_id (= key) is for
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    collected_at REAL  -- results are in descriptions; NULL while the batch is open
);
"""
_LOOKUP_CHUNK = 500  # stays under SQLite's host-parameter limit


def make_key(*, backend: str, identity: dict, template_name: str, template_version: str, template_fingerprint: str,
             prompt, params: dict, k: int) -> str:
    """``identity``: the backend's (``Backend.identity()``): its model, and for servers the endpoint and API.

    Fields beyond the model enter the hash only when present, so keys made before they existed still match.
    """
    extra = {name: value for name, value in identity.items() if name != "model"}
    blob = json.dumps(
        {
            "backend": backend,
            "model": identity["model"],
            **({"server": extra} if extra else {}),
            "template": [template_name, str(template_version), template_fingerprint],
            "prompt": [prompt.text, list(prompt.messages)],
            "params": params,
            "k": k,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class DescriptionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ActionGPTError(f"cannot open description store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_many(self, keys) -> dict[str, list[str]]:
        keys = list(dict.fromkeys(keys))
        found = {}
        with self._lock:
            for i in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[i: i + _LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, descriptions in self._conn.execute(
                    f"SELECT key, descriptions FROM descriptions WHERE key IN ({marks})", chunk
                ):
                    found[key] = json.loads(descriptions)
        return found

    @contextmanager
    def _transaction(self):
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def append(self, key: str, *, phrase: str, descriptions: list[str], raw, meta: dict,
               prompt_tokens: int = 0, completion_tokens: int = 0, requests: int = 0) -> list[str]:
        """Add descriptions (and the raw response that produced them) to a key; returns all it now has."""
        with self._transaction() as conn:
            return self._append(conn, key, phrase=phrase, descriptions=descriptions, raw=raw, meta=meta,
                                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, requests=requests)

    @staticmethod
    def _append(conn, key, *, phrase, descriptions, raw, meta, prompt_tokens=0, completion_tokens=0, requests=0):
        now = time.time()
        row = conn.execute("SELECT descriptions, raw FROM descriptions WHERE key = ?", (key,)).fetchone()
        if row is None:
            allof = list(descriptions)
            conn.execute(
                "INSERT INTO descriptions (key, phrase, backend, model, template, template_version, prompt,"
                " params, k, descriptions, raw, prompt_tokens, completion_tokens, requests, provenance,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, phrase, meta["backend"], meta["model"], meta["template"], str(meta["template_version"]),
                 meta["prompt"], json.dumps(meta["params"], sort_keys=True), meta["k"],
                 json.dumps(allof, ensure_ascii=False), json.dumps([raw], ensure_ascii=False, default=str),
                 prompt_tokens, completion_tokens, requests, meta.get("provenance", ""), now, now),
            )
        else:
            allof = json.loads(row[0]) + list(descriptions)
            raws = json.loads(row[1]) + [raw]
            conn.execute(
                "UPDATE descriptions SET descriptions = ?, raw = ?, prompt_tokens = prompt_tokens + ?,"
                " completion_tokens = completion_tokens + ?, requests = requests + ?, updated_at = ?"
                " WHERE key = ?",
                (json.dumps(allof, ensure_ascii=False), json.dumps(raws, ensure_ascii=False, default=str),
                 prompt_tokens, completion_tokens, requests, now, key),
            )
        return allof

    def put_row(self, row: dict) -> bool:
        """Insert an exported row as is (pack import). Existing keys are kept; returns True if added."""
        now = time.time()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO descriptions (key, phrase, backend, model, template, template_version, prompt,"
                " params, k, descriptions, raw, prompt_tokens, completion_tokens, requests, provenance, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (row["key"], row["phrase"], row.get("backend", ""), row.get("model", ""), row.get("template", ""),
                 str(row.get("template_version", "")), row.get("prompt", ""),
                 json.dumps(row.get("params", {}), sort_keys=True), int(row.get("k", len(row["descriptions"]))),
                 json.dumps(row["descriptions"], ensure_ascii=False), "[]", int(row.get("prompt_tokens", 0)),
                 int(row.get("completion_tokens", 0)), 0, row.get("provenance", "imported"),
                 float(row.get("created_at", now)), now),
            )
        return cur.rowcount == 1

    def rows(self, phrases=None):
        """Every row (or those of the given phrases) as dicts, for export."""
        sql = ("SELECT key, phrase, backend, model, template, template_version, prompt, params, k, descriptions,"
               " prompt_tokens, completion_tokens, requests, provenance, created_at FROM descriptions")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created_at, key").fetchall()
        wanted = set(phrases) if phrases is not None else None
        for r in rows:
            if wanted is not None and r[1] not in wanted:
                continue
            yield {
                "phrase": r[1], "descriptions": json.loads(r[9]), "key": r[0], "backend": r[2], "model": r[3],
                "template": r[4], "template_version": r[5], "prompt": r[6], "params": json.loads(r[7]), "k": r[8],
                "prompt_tokens": r[10], "completion_tokens": r[11], "requests": r[12], "provenance": r[13],
                "created_at": r[14],
            }

    def stats(self) -> dict:
        with self._lock:
            n, pt, ct, rq = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0),"
                " COALESCE(SUM(requests),0) FROM descriptions"
            ).fetchone()
        return {"path": str(self.path), "rows": n, "prompt_tokens": pt, "completion_tokens": ct, "requests": rq}

    # -- OpenAI batches (batch.py): recorded so a rerun resumes them instead of paying again --------
    def add_batch(self, submission: str, endpoint: str, requests: list[dict]) -> None:
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO batches (submission, batch_id, endpoint, status, requests, created_at, updated_at)"
                " VALUES (?, NULL, ?, 'submitting', ?, ?, ?)",
                (submission, endpoint, json.dumps(requests, ensure_ascii=False), now, now),
            )

    def set_batch(self, submission: str, status: str, batch_id: str | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE batches SET status = ?, batch_id = COALESCE(?, batch_id), updated_at = ? WHERE submission = ?",
                (status, batch_id, time.time(), submission),
            )

    def drop_batch(self, submission: str) -> None:
        """Forget a submission whose batch was never created."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM batches WHERE submission = ? AND batch_id IS NULL", (submission,))

    def open_batches(self) -> list[dict]:
        """Submitted batches whose results are not yet in the store, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT submission, batch_id, endpoint, status, requests, created_at FROM batches"
                " WHERE collected_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [{"submission": r[0], "batch_id": r[1], "endpoint": r[2], "status": r[3],
                 "requests": json.loads(r[4]), "created_at": r[5]} for r in rows]

    def collect_batch(self, submission: str, status: str, results: list[dict]) -> None:
        """Append a finished batch's results and close it in one transaction: a crash never adds them twice.

        Each result has the keyword arguments of `append` plus ``key``.
        """
        with self._transaction() as conn:
            for result in results:
                result = dict(result)
                self._append(conn, result.pop("key"), **result)
            conn.execute("UPDATE batches SET status = ?, collected_at = ?, updated_at = ? WHERE submission = ?",
                         (status, time.time(), time.time(), submission))

    def integrity_check(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA integrity_check").fetchone()[0]
