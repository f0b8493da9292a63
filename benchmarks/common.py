"""Shared pieces of the benchmarks: figures, memory readings and the fake server in its own process."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"


def figure(name: str, ours: float, reference: float | None, unit: str, *, against: str, goal: str = "",
           met: bool | None = None, ratio: float | None = None) -> dict:
    """One row of the results table: ours vs a reference measured in the same run, and their ratio."""
    if ratio is None and reference:
        ratio = ours / reference
    return {"figure": name, "ours": ours, "reference": reference, "against": against, "unit": unit,
            "ratio": ratio, "goal": goal, "met": met}


def median(values) -> float:
    return statistics.median(values)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - start, value


class ServerProcess:
    """benchmarks/fake_server.py in a child process, so its threads do not share the client's GIL
    (a real API server is another machine). Counts come back over the child's stdin/stdout."""

    def __init__(self, latency: float, *options: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_server.py"), "--latency", str(latency), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("OPENAI_BASE_URL="):
            self.close()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.base_url = line.split("=", 1)[1]

    def _ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def reset(self) -> dict:
        return self._ask("reset")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
