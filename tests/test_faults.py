"""Faults end to end: the real CLI and openai client against the fake server, real SQLite, real processes.

Server faults must cost a retry, never a lost or doubled phrase; kill -9 and two processes at once must
leave the store whole; bad input must stop before anything is paid for; the API key must never be
written anywhere. Times here are bounds that keep the file fast, not performance claims.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actiongpt_plugin import ActionGPTError, Expander, load_config
from actiongpt_plugin.cli import main as cli_main
from actiongpt_plugin.store import DescriptionStore
from actiongpt_plugin.templates import RELEASE
from fake_openai import Fault, FakeOpenAI, _prompt_text, default_content

KEY = "sk-LEAKCHECK-7f3a9c2e5b1d"
K = 4
FAST = ["--set", "openai.backoff_base=0.01", "--set", "openai.backoff_max=0.05", "--set", "openai.timeout=1"]


def label_of(record) -> str:
    """The phrase a recorded request asked about (the release template's wording)."""
    prompt = _prompt_text(record["path"], record["body"])
    prefix = RELEASE.text.split("{phrase}")[0]
    return prompt[len(prefix):].rsplit(" in details", 1)[0]


def paid(records) -> list[str]:
    """Phrases of the complete requests (a request cut off by kill -9 arrives without its body)."""
    return [label_of(r) for r in records if (r["body"] or {}).get("messages")]


def unique_content():
    """Replies that differ per request, as sampled LLM output does (the default repeats per choice index)."""
    counter = itertools.count()
    return lambda path, body, i: default_content(path, body, i)[:-2] + f", reply {next(counter)})."


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAI(content=unique_content()) as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        yield s


def cli(*args, capsys):
    """The CLI in this process (fast); returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        cli_main(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def cli_process(*args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "actiongpt_plugin", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def write_labels(path: Path, labels) -> Path:
    path.write_text("".join(f"{label}\n" for label in labels))
    return path


def stored(store: Path) -> dict[str, list[str]]:
    with DescriptionStore(store) as s:
        return {row["phrase"]: row["descriptions"] for row in s.rows()}


def store_rows(store: Path) -> int:
    """Rows committed so far, read by an independent connection (as another process would)."""
    if not store.exists():
        return 0
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0]
    except sqlite3.OperationalError:  # the table is being created
        return 0
    finally:
        conn.close()


def integrity(store: Path) -> str:
    with DescriptionStore(store) as s:
        return s.integrity_check()


# -- every fault the server can throw, in one file run -------------------------------------------
FAULTS = {
    "wave the right hand": [Fault.http(429, retry_after=0.3)],
    "jump forward": [Fault.http(500)],
    "sit down slowly": ["drop"],
    "kick with the left leg": [Fault("timeout", seconds=3)],
    "turn around": ["malformed"],
    "bow deeply": ["no_choices"],
    "crawl on the floor": [Fault("fewer", choices=2)],
    "climb a ladder": ["empty"],
    "throw a ball": [Fault.http(503), "drop"],  # two faults in a row
}
CALM = ["walk in a circle", "run in place", "stretch both arms", "lean to the left", "hop on one leg",
        "march forward", "spin around", "stand up"]


def test_file_run_survives_every_fault_and_expands_each_phrase_once(server, tmp_path, capsys, isolated_home):
    pending = {label: [Fault.parse(f) for f in faults] for label, faults in FAULTS.items()}

    def inject(record):
        queue = pending.get(label_of(record))
        if queue:
            record["fault"] = queue.pop(0)
            return record["fault"]
        return None

    server.on_request = inject
    labels = list(FAULTS) + CALM
    pack = tmp_path / "pack.jsonl"
    code, _, err = cli("expand", "--file", str(write_labels(tmp_path / "labels.txt", labels)), "--out", str(pack),
                       *FAST, capsys=capsys)
    assert code == 0, err
    total = sum(1 + len(FAULTS.get(label, [])) for label in labels)
    assert f"{len(labels)} phrases: 0 from the store, {len(labels)} expanded, 0 failed; {total} requests" in err

    # One request per calm phrase; one more per fault, and nothing else.
    by_label: dict[str, list[dict]] = {}
    for record in server.requests:
        by_label.setdefault(label_of(record), []).append(record)
    assert {label: len(recs) for label, recs in by_label.items()} == {
        label: 1 + len(FAULTS.get(label, [])) for label in labels}
    assert all(r["body"]["n"] == K for r in server.requests if label_of(r) != "crawl on the floor")
    assert [r["body"]["n"] for r in by_label["crawl on the floor"]] == [K, K - 2]  # only the missing two re-asked
    waited = by_label["wave the right hand"][1]["time"] - by_label["wave the right hand"][0]["time"]
    assert waited >= 0.3  # Retry-After honoured (backoff_base alone is 0.01 s)

    # Each phrase exactly once, with k distinct descriptions, in the pack and in the store.
    rows = [json.loads(line) for line in pack.read_text().splitlines()]
    assert sorted(r["phrase"] for r in rows) == sorted(labels)
    assert all(len(r["descriptions"]) == K == len(set(r["descriptions"])) for r in rows)
    store = isolated_home / "store.sqlite"
    assert stored(store) == {r["phrase"]: r["descriptions"] for r in rows}
    assert integrity(store) == "ok"

    # The rerun is free.
    before = server.count()
    code, _, err = cli("expand", "--file", str(tmp_path / "labels.txt"), *FAST, capsys=capsys)
    assert code == 0 and f"{len(labels)} from the store, 0 expanded" in err
    assert server.count() == before


def test_exhausted_retries_fail_that_phrase_only(server, tmp_path, capsys):
    server.on_request = lambda record: 500 if label_of(record) == "jump forward" else None
    labels = write_labels(tmp_path / "labels.txt", ["jump forward", "walk in a circle", "stand up"])
    code, _, err = cli("expand", "--file", str(labels), *FAST, "--set", "openai.max_retries=2", capsys=capsys)
    assert code == 1
    assert "3 phrases: 0 from the store, 2 expanded, 1 failed" in err
    assert "failed: 'jump forward': OpenAI request to" in err and "failed after 3 attempt(s): HTTP 500" in err
    assert server.count() == 3 + 2


# -- kill -9 in the middle of a 1,000-phrase run --------------------------------------------------
def test_kill_9_mid_run_then_rerun_pays_nothing_twice(server, tmp_path, isolated_home):
    concurrency = 8
    server.latency = 0.1
    labels = [f"move number {i}" for i in range(1000)]
    path = write_labels(tmp_path / "labels.txt", labels)
    args = ["expand", "--file", str(path), "--no-progress", *FAST]
    store = isolated_home / "store.sqlite"

    first = cli_process(*args, "--concurrency", str(concurrency))
    deadline = time.monotonic() + 60
    while store_rows(store) < 150:
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "the first run stored nothing in 60 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    first.stdout.close(), first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    time.sleep(0.3)  # let the server answer what was in flight into the closed sockets
    paid_first = paid(server.requests)
    kept = stored(store)
    assert 150 <= len(kept) < len(labels) and integrity(store) == "ok"
    assert all(len(v) == K for v in kept.values())
    assert set(kept) <= set(paid_first)

    server.latency = 0.01
    n_first = len(server.requests)
    second = cli_process(*args, "--concurrency", "32")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"1000 phrases: {len(kept)} from the store, {1000 - len(kept)} expanded, 0 failed" in err
    paid_second = paid(server.requests[n_first:])

    assert not set(kept) & set(paid_second)  # nothing stored in run 1 was asked again
    assert len(paid_second) == len(set(paid_second)) == 1000 - len(kept)
    # Paid twice: only what was in flight at the kill (answered by the server, never stored).
    in_flight = (set(paid_first) - set(kept)) & set(paid_second)
    print(f"run 1 stored {len(kept)}, {len(in_flight)} in flight at the kill")
    assert len(in_flight) <= concurrency
    assert len(paid_first) == len(set(paid_first)) == len(kept) + len(in_flight)

    final = stored(store)
    assert sorted(final) == sorted(labels) and all(len(v) == K for v in final.values())
    assert all(final[label] == kept[label] for label in kept)  # run 2 left run 1's rows alone
    assert integrity(store) == "ok"


# -- two processes expanding into one store at once ------------------------------------------------
def test_two_processes_into_one_store(server, tmp_path, isolated_home):
    server.latency = 0.02
    a = [f"action {i}" for i in range(0, 120)]
    b = [f"action {i}" for i in range(60, 180)]  # half of each overlaps the other
    procs = [cli_process("expand", "--file", str(write_labels(tmp_path / f"{name}.txt", labels)), "--no-progress",
                         "--concurrency", "16", *FAST)
             for name, labels in (("a", a), ("b", b))]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "120 phrases:" in err and "0 failed" in err

    store = isolated_home / "store.sqlite"
    union = sorted(set(a) | set(b))
    final = stored(store)
    assert sorted(final) == union  # no loss
    # A phrase both processes missed at the same moment is paid by both; its row then holds both
    # answers (never one lost, never a broken row), and everyone reads its first k.
    assert all(len(v) in (K, 2 * K) and len(set(v)) == len(v) for v in final.values())
    assert integrity(store) == "ok"
    requests = server.count()
    assert len(union) <= requests <= len(union) + 60
    with Expander(load_config(backend="openai", **{"store.path": str(store)})) as ex:
        result = ex.run(union)
    assert result.stats.cache_hits == len(union) and server.count() == requests


# -- bad input costs nothing and reads as one line ------------------------------------------------
@pytest.mark.parametrize("content, args, text", [
    (b"jump\n   \nwalk\n" + b"x" * 10_000 + b"\n", [], "too long"),
    (b"jump\nw\xe4lk\n", [], ":2: not UTF-8"),
    (b"\n  \n\t\n", [], "nothing to expand"),
    (b"jump\n", ["--template", "nope"], "unknown template 'nope'"),
    (b"jump\n", ["--backend", "nope"], "unknown backend 'nope'"),
    (b"jump\n", ["--set", "openai.api_key=", "--set", "openai.base_url="], "needs an API key"),
])
def test_bad_input_is_one_line_and_costs_nothing(server, tmp_path, capsys, monkeypatch, content, args, text):
    if text == "needs an API key":
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("OPENAI_BASE_URL")
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    code, out, err = cli("expand", "--file", str(path), "--backend", "openai", *args, capsys=capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actiongpt: error:") and text in lines[0], err
    assert server.count() == 0


def test_empty_and_whitespace_phrases_in_python(server):
    with Expander(load_config(backend="openai")) as ex:
        for bad in ("", "  \t ", "\n"):
            with pytest.raises(ActionGPTError, match="empty phrase") as info:
                ex.expand(["jump", bad])
            assert "\n" not in str(info.value)
    assert server.count() == 0  # validated before the first request


# -- the key never lands anywhere -----------------------------------------------------------------
def test_api_key_never_written(server, tmp_path, capsys, isolated_home):
    labels = write_labels(tmp_path / "labels.txt", ["jump", "walk in a circle", "wave the right hand"])
    server.add_faults(Fault.http(400, message=f"bad request for key {KEY}"))  # a server that echoes the key
    # 1. A real process with the key in the environment and the openai client's debug logging on.
    proc = cli_process("expand", "--file", str(labels), "--out", str(tmp_path / "env.jsonl"), "--no-progress",
                       *FAST, env={"OPENAI_LOG": "debug"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "HTTP 400" in err and "***" in err  # the echoed key was redacted
    assert "openai._base_client" in err and "DEBUG" in err  # the client's debug logging was really on
    texts = {"expand stdout": out, "expand stderr": err}
    # 2. In process, the key given as a setting, with --json and a pack.
    code, out, err = cli("expand", "--file", str(labels), "--out", str(tmp_path / "set.jsonl"), "--json",
                         "--set", f"openai.api_key={KEY}", *FAST, capsys=capsys)
    assert code == 0 and len(json.loads(out)) == 3
    texts.update({"json stdout": out, "json stderr": err})
    code, out, err = cli("config", "show", "--set", f"openai.api_key={KEY}", capsys=capsys)
    assert code == 0 and "api_key: '***'" in out
    texts.update({"config show": out + err})
    code, out, err = cli("store", "stats", capsys=capsys)
    texts.update({"store stats": out + err})
    code, out, err = cli("pack", "export", str(tmp_path / "export.jsonl"), capsys=capsys)
    assert code == 0

    assert server.authorizations and all(a == f"Bearer {KEY}" for a in server.authorizations)  # it was used
    for where, text in texts.items():
        assert KEY not in text, where
    files = [p for p in list(tmp_path.rglob("*")) + list(isolated_home.rglob("*")) if p.is_file()]
    assert any(p.name == "store.sqlite" for p in files) and any(p.name == "env.jsonl.manifest.json" for p in files)
    for path in files:
        if path.name != "labels.txt":
            assert KEY.encode() not in path.read_bytes(), path
