"""Single flight across processes: paid requests per phrase when several processes expand the same
vocabulary into one store at once.

Side by side, one server (its own process, 127.0.0.1, `latency` seconds per request, counting requests):
- 1, 2, 4, 8 processes of the real CLI (`python -m actiongpt_plugin expand --file ... --backend openai`)
  started together on the same phrase file and the same fresh store;
- a staggered start: 4 processes, each started a third of one expansion's ideal time (phrases x latency /
  concurrency) after the one before, so each finds part of the vocabulary done and part in flight;
- the reference: one process alone (one request per phrase).
Without leases every process pays for every phrase it finds missing when it looks; with them each
phrase is paid once, whoever asks first, and the others read the answer (goal: <= 1.05x one process).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_expansion import phrases
from common import ROOT, ServerProcess, figure

LATENCY = 0.1
CONCURRENCY = 16
K = 4
KEY = "sk-bench-not-a-real-key"


def expand_at_once(server: ServerProcess, labels: Path, store: Path, processes: int, stagger: float = 0.0) -> dict:
    """Start `processes` CLI expansions of one file into one store; requests counted by the server."""
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY,
           "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "actiongpt_plugin", "expand", "--file", str(labels), "--backend", "openai",
           "-k", str(K), "--concurrency", str(CONCURRENCY), "--no-progress", "--set", f"store.path={store}"]
    server.reset()
    start = time.perf_counter()
    procs = []
    for i in range(processes):
        if i and stagger:
            time.sleep(stagger)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            errors.append(err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {processes} expansions failed: {errors[0]}")
    return {"processes": processes, "stagger_s": stagger, "wall_s": wall, "server": server.stats()}


def run(quick: bool = False) -> dict:
    n = 40 if quick else 200
    counts = (1, 2, 4) if quick else (1, 2, 4, 8)
    stagger = round(n * LATENCY / CONCURRENCY / 3, 3)
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(LATENCY) as server:
        labels = Path(tmp) / "labels.txt"
        labels.write_text("".join(f"{label}\n" for label in phrases(n)))
        runs = [expand_at_once(server, labels, Path(tmp) / f"together{p}.sqlite", p) for p in counts]
        staggered = expand_at_once(server, labels, Path(tmp) / "staggered.sqlite", 4, stagger)

    per_phrase = {r["processes"]: r["server"]["requests"] / n for r in runs}
    alone = per_phrase[1]
    figures = [
        figure(f"paid requests per phrase, {p} processes at once", per_phrase[p], alone, "requests",
               against="one process alone", goal="<= 1.05x", met=per_phrase[p] <= 1.05 * alone)
        for p in counts[1:]
    ]
    stagger_pp = staggered["server"]["requests"] / n
    figures.append(figure(f"paid requests per phrase, 4 processes started {stagger} s apart", stagger_pp, alone,
                          "requests", against="one process alone", goal="<= 1.05x", met=stagger_pp <= 1.05 * alone))
    return {
        "name": "single_flight",
        "title": f"Single flight: {n} phrases, k={K}, the same file expanded by several processes into one store "
                 f"({int(LATENCY * 1000)} ms per request, concurrency {CONCURRENCY} each)",
        "figures": figures,
        "details": {"phrases": n, "k": K, "latency_s": LATENCY, "concurrency": CONCURRENCY,
                    "requests_per_phrase": per_phrase, "runs": runs, "staggered": staggered},
    }

