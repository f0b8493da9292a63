"""Several processes, one store: each phrase is paid for once; Ctrl-C stores what is in flight.

Real CLI processes against the fake OpenAI-compatible server (counted requests), real SQLite.
Times here are bounds that keep the file fast, not performance claims.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from fake_openai import FakeOpenAI
from test_faults import K, paid, store_rows, stored, unique_content, write_labels

FAST = ["--no-progress", "--set", "openai.backoff_base=0.01", "--set", "openai.backoff_max=0.05"]


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAI(content=unique_content()) as s:
        monkeypatch.setenv("OPENAI_BASE_URL", s.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-single-flight-test")
        yield s


def expand(labels_file, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "actiongpt_plugin", "expand", "--file", str(labels_file), "-b",
                             "openai", *FAST, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def wait_for(proc, ready, within=60.0) -> None:
    """Poll ``ready()`` while ``proc`` runs; fail if it exits or time runs out first."""
    deadline = time.monotonic() + within
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.02)


def finish(proc, timeout=120) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_processes_at_once_pay_once_per_phrase(server, tmp_path, isolated_home, processes):
    server.latency = 0.02
    labels = [f"move number {i}" for i in range(120)]
    path = write_labels(tmp_path / "labels.txt", labels)
    procs = [expand(path, "--concurrency", "8") for _ in range(processes)]
    errs = [finish(p) for p in procs]
    asked = Counter(paid(server.requests))
    assert sorted(asked) == sorted(labels) and set(asked.values()) == {1}  # every phrase paid exactly once
    assert all("120 phrases:" in e and "0 failed" in e for e in errs)
    # Each process reports what it paid for: together exactly the vocabulary.
    expanded = [int(e.split(" expanded")[0].rsplit(" ", 1)[1]) for e in errs]
    assert sum(expanded) == len(labels)
    final = stored(isolated_home / "store.sqlite")
    assert sorted(final) == sorted(labels) and all(len(v) == K for v in final.values())


def test_a_process_started_later_reads_what_the_first_stored(server, tmp_path, isolated_home):
    server.latency = 0.05
    labels = [f"late move {i}" for i in range(150)]
    path = write_labels(tmp_path / "labels.txt", labels)
    first = expand(path, "--concurrency", "4")
    wait_for(first, lambda: store_rows(isolated_home / "store.sqlite") >= 20)
    second = expand(path, "--concurrency", "4")
    finish(first), finish(second)
    asked = Counter(paid(server.requests))
    assert sorted(asked) == sorted(labels) and set(asked.values()) == {1}


def test_a_killed_owner_is_taken_over_at_once(server, tmp_path, isolated_home):
    """kill -9 leaves leases behind; a process on the same host sees the owner is dead and goes on
    without waiting for the leases to expire (60 s): the test's timeout is below that."""
    server.latency = 0.3
    labels = [f"orphan move {i}" for i in range(60)]
    path = write_labels(tmp_path / "labels.txt", labels)
    first = expand(path, "--concurrency", "8")
    wait_for(first, lambda: store_rows(isolated_home / "store.sqlite") >= 10)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    time.sleep(0.4)  # the server answers what was in flight into closed sockets
    before = len(server.requests)
    kept = stored(isolated_home / "store.sqlite")
    finish(expand(path, "--concurrency", "8"), timeout=45)
    again = Counter(paid(server.requests[before:]))
    assert not set(again) & set(kept) and set(again.values()) == {1}
    assert sorted(stored(isolated_home / "store.sqlite")) == sorted(labels)
    lost = set(paid(server.requests[:before])) - set(kept)  # answered after the kill, never stored
    assert len(lost) <= 8  # at most what was in flight


# -- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_stores_the_answers_in_flight(server, tmp_path, isolated_home):
    server.latency = 1.0
    labels = [f"interrupted move {i}" for i in range(40)]
    path = write_labels(tmp_path / "labels.txt", labels)
    proc = expand(path, "--concurrency", "8")
    wait_for(proc, lambda: len(server.requests) >= 8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "never awaited" not in err
    assert "storing the answers to" in err and "run the same command again to resume" in err
    asked_first = paid(server.requests)
    kept = stored(isolated_home / "store.sqlite")
    assert set(asked_first) == set(kept)  # every request sent was answered and stored: nothing lost
    n = len(server.requests)
    finish(expand(path))
    asked_again = Counter(paid(server.requests[n:]))
    assert not set(asked_again) & set(kept) and len(asked_again) == len(labels) - len(kept)


def test_second_ctrl_c_quits_at_once(server, tmp_path):
    server.latency = 20.0  # answers in flight would take long: the second Ctrl-C must not wait
    path = write_labels(tmp_path / "labels.txt", [f"slow move {i}" for i in range(10)])
    proc = expand(path, "--concurrency", "4")
    wait_for(proc, lambda: len(server.requests) >= 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "never awaited" not in err and "Task was destroyed" not in err
