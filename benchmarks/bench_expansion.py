"""Expansion throughput and request cost against an OpenAI-compatible server with fixed latency.

Side by side, one server (its own process, 127.0.0.1, `latency` seconds per request):
- ours: `Expander` with the openai backend, concurrency 32, a fresh store (median of `repeats` runs);
- the rerun: the same phrases again into the filled store (requests counted by the server);
- the client floor: bare `openai.AsyncOpenAI` at concurrency 32 with the same requests, no store;
- the release: one phrase after the other with the synchronous client, the prompt sent k times in
  one legacy Completions call, as its gpt_annotator.py did;
- the ideal: phrases x latency / concurrency;
- fixed 32 in flight (`openai.adaptive=false`), the default before the adaptive window.

Then a server that answers ONE request at a time (`fake_server.py --serial`, like llama.cpp's server:
the others queue, and a request keeps the server busy for its service time even after its client
gave up), with a client timeout 7 x the service time (the real run: ~8 s per answer, 60 s timeout):
the default settings (adaptive window, ceiling 32) against a sweep of fixed concurrencies.
"""
from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from common import ServerProcess, figure, median

SERVICE = 0.05  # seconds the one-at-a-time server spends on each request
SERVICE_TIMEOUT = 0.35  # the client's timeout there: 7 x the service time

LATENCY = 0.2
CONCURRENCY = 32
K = 4
KEY = "sk-bench-not-a-real-key"
VERBS = ["walk", "run", "jump", "kick", "wave", "throw", "sit down", "stand up", "turn", "crouch", "climb",
         "punch", "stretch", "dance", "bow", "limp", "skip", "hop", "crawl", "lean", "spin", "stumble",
         "march", "jog", "lunge"]
HOW = ["forward", "backward", "to the left", "to the right", "slowly", "quickly", "in a circle", "on one leg",
       "with both arms", "while carrying a box", "carefully", "energetically", "twice", "in place", "sideways",
       "with a limp", "on tiptoes", "diagonally", "while looking up", "with the left hand"]


def phrases(n: int) -> list[str]:
    combos = [f"{v} {h}" for h, v in itertools.product(HOW, VERBS)]
    assert n <= len(combos)
    return combos[:n]


def expander_config(base_url: str, store: Path, concurrency: int = CONCURRENCY, **options):
    from actiongpt_plugin import load_config

    return load_config(backend="openai", k=K, **{
        "openai.base_url": base_url, "openai.api_key": KEY, "openai.model": "gpt-4o-mini",
        "openai.concurrency": concurrency, "expand.concurrency": concurrency, "store.path": str(store), **options,
    })


def run_ours(server: ServerProcess, labels: list[str], store: Path, may_fail: bool = False, **options) -> dict:
    from actiongpt_plugin import Expander

    server.reset()
    start = time.perf_counter()
    with Expander(expander_config(server.base_url, store, **options)) as ex:
        result = ex.run(labels)
        window = ex.backend.limiter.state() if ex.backend.paid else None
    wall = time.perf_counter() - start
    if not may_fail:
        assert not result.stats.failures and len(result.descriptions) == len(labels), result.stats.failures
    drain(server)
    return {"wall_s": wall, "server": server.stats(), "stats": result.stats.as_dict(), "window": window,
            "failed": len(result.stats.failures)}


def drain(server: ServerProcess, limit_s: float = 60.0) -> None:
    """Wait until the server has finished what it still computes for clients that gave up."""
    deadline = time.monotonic() + limit_s
    while server.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


def run_client_floor(server: ServerProcess, labels: list[str]) -> float:
    import openai

    from actiongpt_plugin.templates import RELEASE

    async def go():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(label):
            async with gate:
                return await client.chat.completions.create(
                    model="gpt-4o-mini", n=K, temperature=0.5, max_tokens=128,
                    messages=RELEASE.render(label).as_messages())

        start = time.perf_counter()
        await asyncio.gather(*(one(label) for label in labels))
        wall = time.perf_counter() - start
        await client.close()
        return wall

    server.reset()
    return asyncio.run(go())


def run_release(server: ServerProcess, labels: list[str]) -> dict:
    """The release's loop (gpt_annotator.py) on today's synchronous client."""
    import openai

    from actiongpt_plugin.templates import RELEASE

    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    server.reset()
    out = {}
    start = time.perf_counter()
    for label in labels:
        response = client.completions.create(
            model="text-davinci-002", prompt=[RELEASE.render(label).text] * K, temperature=0.5, top_p=1,
            max_tokens=128, frequency_penalty=0, presence_penalty=0)
        out[label] = [c.text.replace("\n", "") for c in response.choices]
    wall = time.perf_counter() - start
    client.close()
    assert all(len(v) == K for v in out.values())
    return {"wall_s": wall, "server": server.stats()}


def run_one_at_a_time(quick: bool) -> dict:
    """Default settings vs a sweep of fixed concurrencies against a server that answers one at a time."""
    n = 24 if quick else 120
    sweep = (1, 4, 32) if quick else (1, 2, 4, 8, 32)
    labels = phrases(n)
    timeout = {"openai.timeout": SERVICE_TIMEOUT}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(SERVICE, "--serial") as server:
        adaptive, fixed = [], {}
        for c in sweep:  # adaptive runs between the fixed ones, so load on the machine hits both
            if len(adaptive) < (1 if quick else 2):
                adaptive.append(run_ours(server, labels, Path(tmp) / f"a{len(adaptive)}.sqlite", may_fail=True,
                                         **timeout))
            fixed[c] = run_ours(server, labels, Path(tmp) / f"f{c}.sqlite", concurrency=c, may_fail=True,
                                **{"openai.adaptive": False, **timeout})
    return {"phrases": n, "service_s": SERVICE, "timeout_s": SERVICE_TIMEOUT, "adaptive": adaptive, "fixed": fixed}


def one_at_a_time_figures(r: dict) -> list[dict]:
    n, fixed = r["phrases"], r["fixed"]
    complete = {c: f for c, f in fixed.items() if f["failed"] == 0}
    best_c = min(complete, key=lambda c: complete[c]["wall_s"])
    best = complete[best_c]["wall_s"]
    wall = median([a["wall_s"] for a in r["adaptive"]])
    failed = max(a["failed"] for a in r["adaptive"])
    worst = fixed[max(fixed)]
    where = f"one-at-a-time server ({int(SERVICE * 1000)} ms each, timeout {SERVICE_TIMEOUT} s), {n} phrases"
    last = r["adaptive"][-1]
    return [
        figure(f"{where}: default settings (adaptive, ceiling 32), wall time", wall, best, "s",
               against=f"best fixed concurrency of {sorted(fixed)} (it was {best_c})", goal="<= 1.2x, 0 failed",
               met=wall / best <= 1.2 and failed == 0),
        figure(f"{where}: phrases failed, default settings", failed, None, "phrases", against="-", goal="0",
               met=failed == 0),
        figure(f"{where}: fixed {max(fixed)} (the old default), wall time", worst["wall_s"], best, "s",
               against=f"best fixed concurrency ({best_c})"),
        figure(f"{where}: phrases failed at fixed {max(fixed)}", worst["failed"], None, "phrases", against="-"),
        figure(f"{where}: answers computed for clients that had given up", last["server"]["abandoned"],
               worst["server"]["abandoned"], "answers", against=f"fixed {max(fixed)}"),
        figure(f"{where}: requests counted in the run's stats", worst["stats"]["requests"],
               worst["server"]["requests"], "requests", against=f"requests the server received (fixed {max(fixed)})",
               goal="equal", met=worst["stats"]["requests"] == worst["server"]["requests"]),
    ]


def run(quick: bool = False) -> dict:
    from actiongpt_plugin.plugins import get_registry

    n = 64 if quick else 500
    repeats = 1 if quick else 3
    labels = phrases(n)
    load_s = time.perf_counter()
    get_registry()  # one-time costs of a process, not part of any expansion timing:
    import openai  # noqa: F401  plugin loading and the client library's import
    load_s = time.perf_counter() - load_s
    ideal = n * LATENCY / CONCURRENCY
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(LATENCY) as server:
        ours, floors, fixed = [], [], []
        for i in range(repeats):  # alternated, so other load on the machine hits both alike
            ours.append(run_ours(server, labels, Path(tmp) / f"store{i}.sqlite"))
            floors.append(run_client_floor(server, labels))
            fixed.append(run_ours(server, labels, Path(tmp) / f"fixed{i}.sqlite", **{"openai.adaptive": False}))
        rerun = run_ours(server, labels, Path(tmp) / f"store{repeats - 1}.sqlite")
        floor = median(floors)
        release = run_release(server, labels)
    serial = run_one_at_a_time(quick)

    wall = median([o["wall_s"] for o in ours])
    first = ours[-1]
    req_ours = first["server"]["requests"] / n
    req_release = release["server"]["requests"] / n
    tok_ours = first["server"]["prompt_words"] / n
    tok_release = release["server"]["prompt_words"] / n
    figures = [
        figure(f"expansion wall time, {n} phrases", wall, release["wall_s"], "s",
               against="release's sequential loop (same server)"),
        figure(f"expansion wall time, {n} phrases", wall, ideal, "s",
               against=f"ideal: phrases x {LATENCY} s / {CONCURRENCY}", goal="<= 1.3x", met=wall / ideal <= 1.3),
        figure(f"expansion wall time, {n} phrases (adaptive window)", wall, median([f["wall_s"] for f in fixed]), "s",
               against=f"fixed {CONCURRENCY} in flight (openai.adaptive=false)"),
        figure("bare openai.AsyncOpenAI, same requests (client floor)", floor, ideal, "s",
               against=f"ideal: phrases x {LATENCY} s / {CONCURRENCY}"),
        figure(f"expansion wall time, {n} phrases", wall, floor, "s",
               against="bare openai.AsyncOpenAI (our overhead: store, cleaning, hooks)"),
        figure("requests made by a rerun", rerun["server"]["requests"], first["server"]["requests"], "requests",
               against="first run", goal="0", met=rerun["server"]["requests"] == 0),
        figure("wall time of a rerun (all from the store)", rerun["wall_s"], wall, "s", against="first run"),
        figure("requests per phrase", req_ours, req_release, "requests", against="release (k prompts in one call)",
               goal="1, not k", met=req_ours == 1.0),
        figure("prompt tokens per phrase", tok_ours, tok_release, "tokens (words)",
               against="release (k prompts in one call)", goal="1/k of the release", met=tok_ours * K <= tok_release),
        *one_at_a_time_figures(serial),
    ]
    return {
        "name": "expansion",
        "title": f"Expansion: {n} phrases, k={K}, {int(LATENCY * 1000)} ms per request, concurrency {CONCURRENCY}",
        "figures": figures,
        "details": {
            "phrases": n, "k": K, "latency_s": LATENCY, "concurrency": CONCURRENCY, "ideal_s": ideal,
            "ours_runs_s": [o["wall_s"] for o in ours], "ours_server": first["server"], "ours_stats": first["stats"],
            "rerun": rerun, "client_floor_runs_s": floors, "release": release, "plugin_load_s": load_s,
            "fixed_runs_s": [f["wall_s"] for f in fixed], "window": first["window"], "one_at_a_time": serial,
        },
    }
