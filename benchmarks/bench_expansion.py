"""Expansion throughput and request cost against an OpenAI-compatible server with fixed latency.

Side by side, one server (its own process, 127.0.0.1, `latency` seconds per request):
- ours: `Expander` with the openai backend, concurrency 32, a fresh store (median of `repeats` runs);
- the rerun: the same phrases again into the filled store (requests counted by the server);
- the client floor: bare `openai.AsyncOpenAI` at concurrency 32 with the same requests, no store;
- the release: one phrase after the other with the synchronous client, the prompt sent k times in
  one legacy Completions call, as its gpt_annotator.py did;
- the ideal: phrases x latency / concurrency.
"""
from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from common import ServerProcess, figure, median

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


def expander_config(base_url: str, store: Path):
    from actiongpt_plugin import load_config

    return load_config(backend="openai", k=K, **{
        "openai.base_url": base_url, "openai.api_key": KEY, "openai.concurrency": CONCURRENCY,
        "expand.concurrency": CONCURRENCY, "store.path": str(store),
    })


def run_ours(server: ServerProcess, labels: list[str], store: Path) -> dict:
    from actiongpt_plugin import Expander

    server.reset()
    start = time.perf_counter()
    with Expander(expander_config(server.base_url, store)) as ex:
        result = ex.run(labels)
    wall = time.perf_counter() - start
    assert not result.stats.failures and len(result.descriptions) == len(labels), result.stats.failures
    return {"wall_s": wall, "server": server.stats(), "stats": result.stats.as_dict()}


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
        ours, floors = [], []
        for i in range(repeats):  # alternated, so other load on the machine hits both alike
            ours.append(run_ours(server, labels, Path(tmp) / f"store{i}.sqlite"))
            floors.append(run_client_floor(server, labels))
        rerun = run_ours(server, labels, Path(tmp) / f"store{repeats - 1}.sqlite")
        floor = median(floors)
        release = run_release(server, labels)

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
    ]
    return {
        "name": "expansion",
        "title": f"Expansion: {n} phrases, k={K}, {int(LATENCY * 1000)} ms per request, concurrency {CONCURRENCY}",
        "figures": figures,
        "details": {
            "phrases": n, "k": K, "latency_s": LATENCY, "concurrency": CONCURRENCY, "ideal_s": ideal,
            "ours_runs_s": [o["wall_s"] for o in ours], "ours_server": first["server"], "ours_stats": first["stats"],
            "rerun": rerun, "client_floor_runs_s": floors, "release": release, "plugin_load_s": load_s,
        },
    }
