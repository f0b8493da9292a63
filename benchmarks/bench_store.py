"""Description store at 100,000 phrases: lookup time and memory held, against the release's JSON.

The same 100,000 phrases x 4 descriptions go into a `DescriptionStore` (SQLite) and into a
release-style gpt3_annotations.json. Each side is then read in a fresh process, so resident-memory
growth (RSS) is that side's alone. The release re-read its JSON on every call; a loaded dict is also
timed, as the fastest thing a user could do with that file.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import figure, rss_bytes

BATCH = 64  # phrases in one training batch
PARTS = ("bends the knees and lowers the hips", "swings both arms forward", "shifts the weight onto the left leg",
         "keeps the back straight", "lifts the right foot off the ground", "turns the torso to the right")


def key_of(i: int) -> str:
    return hashlib.sha256(f"phrase-{i}".encode()).hexdigest()


def descriptions_of(i: int) -> list[str]:
    rng = random.Random(i)
    return [f"The person {rng.choice(PARTS)}, then {rng.choice(PARTS)} and {rng.choice(PARTS)} (variant {i}.{j})."
            for j in range(4)]


def build(tmp: Path, n: int) -> dict:
    from actiongpt_plugin.store import DescriptionStore

    db, release = tmp / "store.sqlite", tmp / "gpt3_annotations.json"
    start = time.perf_counter()
    with DescriptionStore(db) as store:
        store._conn.execute("BEGIN")  # one transaction for the setup; expansion writes one row per answer
        for i in range(n):
            store.put_row({"key": key_of(i), "phrase": f"action phrase number {i}", "descriptions": descriptions_of(i),
                           "backend": "openai", "model": "gpt-4o-mini", "template": "actiongpt", "k": 4})
        store._conn.execute("COMMIT")
    insert_s = time.perf_counter() - start
    release.write_text(json.dumps({f"action phrase number {i}": descriptions_of(i) for i in range(n)}))
    return {"db": str(db), "json": str(release), "insert_s": insert_s,
            "db_bytes": db.stat().st_size, "json_bytes": release.stat().st_size}


def measure_store(db: str, n: int) -> dict:
    from actiongpt_plugin.store import DescriptionStore

    keys = [key_of(i) for i in range(n)]
    rng = random.Random(0)
    batches = [rng.sample(keys, BATCH) for _ in range(200)]
    base = rss_bytes()
    store = DescriptionStore(db)
    store.get_many(keys[:BATCH])  # warm the connection
    start = time.perf_counter()
    for batch in batches:
        found = store.get_many(batch)
        assert len(found) == BATCH
    batch_s = (time.perf_counter() - start) / len(batches)
    held = rss_bytes() - base  # the open store after the batch lookups of training
    start = time.perf_counter()
    everything = store.get_many(keys)
    all_s = time.perf_counter() - start
    assert len(everything) == n and all(len(v) == 4 for v in everything.values())
    with_result = rss_bytes() - base
    store.close()
    return {"batch_s": batch_s, "all_s": all_s, "held_bytes": held, "rss_with_all_results_bytes": with_result}


def measure_release(path: str, n: int) -> dict:
    labels = [f"action phrase number {i}" for i in range(n)]
    base = rss_bytes()
    start = time.perf_counter()
    with open(path) as f:
        table = json.load(f)
    load_s = time.perf_counter() - start
    held = rss_bytes() - base
    rng = random.Random(0)
    batches = [rng.sample(labels, BATCH) for _ in range(200)]
    start = time.perf_counter()
    for batch in batches:
        found = {label: table[label] for label in batch}
        assert len(found) == BATCH
    dict_batch_s = (time.perf_counter() - start) / len(batches)
    return {"load_s": load_s, "held_bytes": held, "dict_batch_s": dict_batch_s}


def run(quick: bool = False) -> dict:
    n = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp), n)
        ours = _in_child("measure_store", built["db"], n)
        release = _in_child("measure_release", built["json"], n)
    mib = 1024 * 1024
    figures = [
        figure(f"lookup of one batch of {BATCH} phrases", ours["batch_s"] * 1e3, release["load_s"] * 1e3, "ms",
               against="release: re-reads its JSON on every call"),
        figure(f"lookup of one batch of {BATCH} phrases", ours["batch_s"] * 1e3, release["dict_batch_s"] * 1e3, "ms",
               against="the JSON held in a dict (after loading it once)"),
        figure(f"lookup of all {n:,} phrases (get_many)", ours["all_s"], release["load_s"], "s",
               against="loading the whole JSON once"),
        figure(f"per-phrase time in that lookup", ours["all_s"] / n * 1e6, release["load_s"] / n * 1e6, "us",
               against="loading the whole JSON once"),
        figure("memory held while serving lookups (RSS growth)", ours["held_bytes"] / mib, release["held_bytes"] / mib,
               "MiB", against="the JSON held in a dict"),
    ]
    return {
        "name": "store",
        "title": f"Store: {n:,} cached phrases x 4 descriptions",
        "figures": figures,
        "details": {"phrases": n, **built, "ours": ours, "release": release},
        "notes": [
            "The store's memory is SQLite's page cache (about 2 MiB by default) plus Python objects of the rows asked for; "
            f"holding all {n:,} results at once grows RSS by "
            f"{ours['rss_with_all_results_bytes'] / mib:.0f} MiB, comparable to the dict.",
            f"Setup: {n:,} rows inserted in one transaction in {built['insert_s']:.1f} s; store file "
            f"{built['db_bytes'] / mib:.0f} MiB, JSON {built['json_bytes'] / mib:.0f} MiB.",
        ],
    }


def _in_child(function: str, path: str, n: int) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_store as b; "
            f"print(json.dumps(b.{function}({path!r}, {n})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
