"""SQLite description store: every paid LLM result is written the moment it arrives.

Rows are keyed by a hash of everything that shapes the output (backend, model, template identity,
rendered prompt, sampling parameters, k). Descriptions accumulate per key, so a partial answer
(2 of 4 usable) is kept and only the rest is asked for after a crash. WAL mode plus BEGIN IMMEDIATE
lets several processes expand into one store at once.

Single flight across processes: before paying for a key a process `claim`s it (a lease row with owner
and expiry, in the same file and transaction as the read of what is stored); others see it busy and
wait for the answer instead of paying again. A lease of a killed process is taken over at once on the
same host, and by anyone once it expires.

A store that cannot be written (read-only file, directory or file system, or ``readonly=True``) is
opened read-only: lookups work, every write raises ActionGPTError.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import secrets
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
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
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,  -- a descriptions key some process is paying for now
    owner TEXT NOT NULL,  -- lease_owner() of that process: host:pid:token
    expires REAL NOT NULL  -- time.time() after which anyone may take the lease over
);
"""
_LOOKUP_CHUNK = 500  # stays under SQLite's host-parameter limit


def _host_id() -> str:
    """The host part of lease owners: the hostname, plus the pid namespace where there is one, so that
    containers sharing a hostname and a store never judge each other's pids."""
    name = socket.gethostname().replace(":", "_")
    try:
        namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())
    except OSError:  # no procfs (macOS)
        return name
    return f"{name}/{namespace}"


_HOST = _host_id()
_owner: tuple[int, str] | None = None
log = logging.getLogger("actiongpt")  # the CLI shows its warnings on stderr
OPEN_RETRY_SECONDS = 30.0  # how long opening waits out other processes creating the same store


def _chunks(keys: list):
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        yield keys[i: i + _LOOKUP_CHUNK]


def lease_owner() -> str:
    """This process's lease owner id, ``host:pid:token``. The token is random, so a process that reuses
    a dead one's pid, or a forked child (new pid, new token), is never mistaken for it."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{_HOST}:{pid}:{secrets.token_hex(8)}")
    return _owner[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: it holds nothing any more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # no procfs (macOS): trust kill
        return True


def _owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` was a process on this host that no longer runs (its leases can go now).

    Owners on other hosts, or not in lease_owner()'s form, count as alive: their leases go at expiry.
    """
    host, _, rest = owner.partition(":")
    pid, _, token = rest.partition(":")
    if host != _HOST or not pid.isdigit() or int(pid) <= 0 or not token:
        return False
    if int(pid) == os.getpid():  # our pid but not our token: an earlier process that had this pid
        return owner != lease_owner()
    return not _pid_alive(int(pid))


@dataclass
class Claim:
    """What `DescriptionStore.claim` found and took, in one transaction."""

    current: dict = field(default_factory=dict)  # key -> descriptions stored now (keys without a row absent)
    mine: set = field(default_factory=set)  # keys whose lease this owner now holds: pay for these
    busy: dict = field(default_factory=dict)  # key -> expiry of a live other owner's lease: wait, then re-claim


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
            **({"identity": extra} if extra else {}),
            "template": [template_name, str(template_version), template_fingerprint],
            "prompt": [prompt.text, list(prompt.messages)],
            "params": params,
            "k": k,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _is_readonly_error(exc: sqlite3.Error) -> bool:
    """SQLITE_READONLY or SQLITE_CANTOPEN (e.g. no -wal/-shm can be created beside the file)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN)
    text = str(exc)
    return "readonly database" in text or "unable to open database file" in text


class DescriptionStore:
    def __init__(self, path: str | Path, *, readonly: bool = False):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self.readonly_reason = "opened with readonly=True" if readonly else self._why_not_writable()
        try:
            if self.readonly_reason is None:
                try:
                    self._conn = self._open_read_write()
                except sqlite3.OperationalError as exc:
                    if not _is_readonly_error(exc):
                        raise
                    self.readonly_reason = f"cannot write: {exc}"
            if self.readonly_reason is not None:
                self._conn = self._open_read_only()
        except sqlite3.DatabaseError as exc:
            raise ActionGPTError(f"cannot open description store {self.path}: {exc}") from None

    @property
    def writable(self) -> bool:
        return self.readonly_reason is None

    def _why_not_writable(self) -> str | None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"cannot create {folder}: {exc.strerror}"
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
        if self.path.exists() and not os.access(self.path, os.W_OK):
            return "the file is not writable"
        if not os.access(folder, os.W_OK | os.X_OK):  # WAL needs its -wal and -shm files beside the store
            return "its directory is not writable"
        return None

    def _open_read_write(self) -> sqlite3.Connection:
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked"
        # at once (no busy wait) while another process does the same: several ranks opening one fresh
        # store at the same moment retry for a while instead of failing.
        deadline = time.monotonic() + OPEN_RETRY_SECONDS
        while True:
            conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
                conn.executescript(SCHEMA)  # IF NOT EXISTS: older stores gain new tables in place
                return conn
            except sqlite3.OperationalError as exc:
                conn.close()
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.01, 0.1))
            except BaseException:
                conn.close()
                raise

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.exists():
            # Nothing stored, and nothing may be created: an empty in-memory store answers every lookup.
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            conn.executescript(SCHEMA)
            return conn
        uri = self.path.resolve().as_uri()
        try:
            return self._connect_uri(uri + "?mode=ro")
        except sqlite3.OperationalError as exc:
            if not _is_readonly_error(exc):
                raise
        # A WAL store in a read-only directory without its -shm file: only readable as immutable, which
        # also skips any -wal file (a cleanly closed store has none).
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            log.warning("%s: its -wal file cannot be read from a read-only directory; newest rows may be missing", self.path)
        return self._connect_uri(uri + "?mode=ro&immutable=1")

    @staticmethod
    def _connect_uri(uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opening is lazy: fail here, not later
        except BaseException:
            conn.close()
            raise
        return conn

    def _require_writable(self) -> None:
        if self.readonly_reason is not None:
            raise ActionGPTError(f"description store {self.path} is read-only ({self.readonly_reason})")

    def _read(self, sql: str, args=()) -> list:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                # A read-only store from an older version may lack a newer table: nothing recorded there.
                if self.writable or "no such table" not in str(exc):
                    raise
                return []

    def close(self):
        self._conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_many(self, keys) -> dict[str, list[str]]:
        found = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            found.update(self._descriptions(chunk))
        return found


    def _descriptions(self, chunk: list, conn=None) -> dict[str, list[str]]:
        sql = f"SELECT key, descriptions FROM descriptions WHERE key IN ({','.join('?' * len(chunk))})"
        rows = conn.execute(sql, chunk).fetchall() if conn is not None else self._read(sql, chunk)
        return {key: json.loads(descriptions) for key, descriptions in rows}

    @contextmanager
    def _transaction(self):
        self._require_writable()
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- leases: one process pays for a key, the others wait for its answer ----------------------
    def claim(self, keys, owner: str, ttl: float) -> Claim:
        """Read what is stored for ``keys`` and lease every key that is free, in one transaction.

        A key is free when it has no lease, or its lease is expired, already ``owner``'s, or held by a
        process of this host that no longer runs. Claiming a key that turns out complete is harmless:
        ``append(release=)`` or `release` gives it back.
        """
        keys = list(dict.fromkeys(keys))
        claim = Claim()
        if not keys:
            return claim
        with self._transaction() as conn:
            now = time.time()
            leases = {}
            for chunk in _chunks(keys):
                claim.current.update(self._descriptions(chunk, conn))
                marks = ",".join("?" * len(chunk))
                for key, holder, expires in conn.execute(
                    f"SELECT key, owner, expires FROM leases WHERE key IN ({marks})", chunk
                ):
                    leases[key] = (holder, expires)
            dead = {}  # holder -> its process is gone (asked once per holder)
            for key in keys:
                holder, expires = leases.get(key, (owner, now))
                if holder != owner and expires > now:
                    if holder not in dead:
                        dead[holder] = _owner_is_dead(holder)
                    if not dead[holder]:
                        claim.busy[key] = expires
                        continue
                claim.mine.add(key)
            conn.executemany("INSERT OR REPLACE INTO leases (key, owner, expires) VALUES (?, ?, ?)",
                             [(key, owner, now + ttl) for key in claim.mine])
        return claim

    def release(self, keys, owner: str) -> None:
        """Give back ``owner``'s leases on ``keys`` (a lease taken over by someone else stays theirs).

        Expired leases of anyone go too: free already, they would otherwise stay in the file for good.
        """
        keys = list(dict.fromkeys(keys))
        with self._transaction() as conn:
            for chunk in _chunks(keys):
                conn.execute(f"DELETE FROM leases WHERE owner = ? AND key IN ({','.join('?' * len(chunk))})",
                             [owner, *chunk])
            conn.execute("DELETE FROM leases WHERE expires < ?", (time.time(),))

    def renew(self, owner: str, ttl: float) -> int:
        """Extend every lease of ``owner`` to ttl seconds from now (a heartbeat); returns how many it holds."""
        with self._transaction() as conn:
            return conn.execute("UPDATE leases SET expires = ? WHERE owner = ?", (time.time() + ttl, owner)).rowcount

    def leases(self) -> dict[str, tuple[str, float]]:
        """Every lease now recorded: key -> (owner, expires)."""
        return {key: (owner, expires) for key, owner, expires in self._read("SELECT key, owner, expires FROM leases")}

    def append(self, key: str, *, phrase: str, descriptions: list[str], raw, meta: dict,
               prompt_tokens: int = 0, completion_tokens: int = 0, requests: int = 0,
               release: str | None = None) -> list[str]:
        """Add descriptions (and the raw response that produced them) to a key; returns all it now has.

        ``release``: an owner whose lease on the key goes in the same transaction, so no other process
        ever sees the lease gone before the answer is there.
        """
        with self._transaction() as conn:
            allof = self._append(conn, key, phrase=phrase, descriptions=descriptions, raw=raw, meta=meta,
                                 prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, requests=requests)
            if release is not None:
                conn.execute("DELETE FROM leases WHERE key = ? AND owner = ?", (key, release))
            return allof

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

    _INSERT_ROW = (
        "INSERT OR IGNORE INTO descriptions (key, phrase, backend, model, template, template_version, prompt,"
        " params, k, descriptions, raw, prompt_tokens, completion_tokens, requests, provenance, created_at,"
        " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )

    @staticmethod
    def _row_values(row: dict, now: float) -> tuple:
        return (row["key"], row["phrase"], row.get("backend", ""), row.get("model", ""), row.get("template", ""),
                str(row.get("template_version", "")), row.get("prompt", ""),
                json.dumps(row.get("params", {}), sort_keys=True), int(row.get("k", len(row["descriptions"]))),
                json.dumps(row["descriptions"], ensure_ascii=False), "[]", int(row.get("prompt_tokens", 0)),
                int(row.get("completion_tokens", 0)), 0, row.get("provenance", "imported"),
                float(row.get("created_at", now)), now)

    def put_row(self, row: dict) -> bool:
        """Insert an exported row as is, in the caller's transaction if one is open. Existing keys are
        kept; returns True if added. Rows must be valid (packs.validate_row): see put_rows."""
        self._require_writable()
        with self._lock:
            return self._conn.execute(self._INSERT_ROW, self._row_values(row, time.time())).rowcount == 1

    def put_rows(self, rows) -> int:
        """Insert exported rows (pack import) in ONE transaction: all or none. Existing keys are kept;
        returns how many were added."""
        now = time.time()
        with self._transaction() as conn:
            return sum(conn.execute(self._INSERT_ROW, self._row_values(row, now)).rowcount for row in rows)

    def phrases(self, backend: str) -> list[str]:
        """The distinct phrases stored for ``backend``, sorted."""
        rows = self._read("SELECT DISTINCT phrase FROM descriptions WHERE backend = ? ORDER BY phrase", (backend,))
        return [r[0] for r in rows]

    def rows(self, phrases=None):
        """Every row (or those of the given phrases) as dicts, for export."""
        sql = ("SELECT key, phrase, backend, model, template, template_version, prompt, params, k, descriptions,"
               " prompt_tokens, completion_tokens, requests, provenance, created_at FROM descriptions")
        rows = self._read(sql + " ORDER BY created_at, key")
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
        n, pt, ct, rq = (self._read(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0),"
            " COALESCE(SUM(requests),0) FROM descriptions"
        ) or [(0, 0, 0, 0)])[0]
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
        rows = self._read(
            "SELECT submission, batch_id, endpoint, status, requests, created_at FROM batches"
            " WHERE collected_at IS NULL ORDER BY created_at"
        )
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
        return self._read("PRAGMA integrity_check")[0][0]
