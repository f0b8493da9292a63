"""Local generation with the embedded model (SmolLM2-135M-Instruct GGUF): batched vs one prompt at a time.

The transformers backend runs through `Expander` (few-shot template, k samples per prompt from one
generate() call, store off so nothing is served from cache, no re-asking rounds), once with
`batch_size` prompts per generate() call and once with one prompt per call, on different phrases
of the same kind. llama.cpp (one sample per call, no prompt batching) is measured the same way when
llama-cpp-python is installed, in a child process without OMP_WAIT_POLICY (it slows llama.cpp),
with every core (the engine's setting) and, on the same phrases and seed (the same tokens), with one
thread, alternated.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

from common import figure, median

K = 4
PHRASES = ["jump forward", "wave the right hand", "sit down slowly", "kick with the left leg", "turn around",
           "bow deeply", "crawl on the floor", "climb a ladder", "throw a ball", "walk in a circle",
           "run in place", "stretch both arms", "lean to the left", "hop on one leg", "march forward", "spin around"]


def gguf() -> str:
    from actiongpt_plugin.backends.embedded import model_path

    return str(model_path())


def config(backend: str, quick: bool, **extra):
    from actiongpt_plugin import load_config

    return load_config(backend=backend, k=K, template="few-shot", **{
        "store.enabled": False, "expand.attempts": 0, "sampling.seed": 0,
        "sampling.max_tokens": 32 if quick else 128, **extra})


def measure(expander, phrases) -> dict:
    start = time.perf_counter()
    result = expander.run(phrases)
    wall = time.perf_counter() - start
    s = result.stats
    # Cleaning may drop weak samples; count what the model produced and what survived.
    return {"wall_s": wall, "phrases": len(phrases), "completion_tokens": s.completion_tokens,
            "samples": len(phrases) * K, "usable_phrases": len(result.descriptions),
            "tokens_per_s": s.completion_tokens / wall, "descriptions_per_s": len(phrases) * K / wall}


def warm_up(generate) -> None:
    """One tiny call, so first-call setup is not timed: ``generate(request, params)``."""
    from actiongpt_plugin.backends.base import Request, SamplingParams
    from actiongpt_plugin.plugins import get_registry

    generate(Request("nod", get_registry().template("few-shot").render("nod")), SamplingParams(max_tokens=2))


def transformers_runs(quick: bool) -> dict:
    from actiongpt_plugin import Expander

    batch = 4 if quick else 8
    n_batched, n_single = (batch, 2) if quick else (batch, 3)
    with Expander(config("transformers", quick, model=gguf(), **{"transformers.batch_size": batch})) as ex:
        start = time.perf_counter()
        ex.backend.load()
        load_s = time.perf_counter() - start
        warm_up(lambda request, params: ex.backend.generate([request], 1, params))
        batched = measure(ex, PHRASES[:n_batched])
        ex.backend.batch_size = 1
        single = measure(ex, PHRASES[n_batched:n_batched + n_single])
    return {"load_s": load_s, "batch_size": batch, "batched": batched, "one_at_a_time": single}


def llamacpp_run(quick: bool) -> dict | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import bench_generation as b; print(json.dumps(b._llamacpp_child({quick!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _llamacpp_child(quick: bool) -> dict:
    from actiongpt_plugin import Expander
    from actiongpt_plugin.backends.embedded import LlamaCppEngine

    phrases = PHRASES[:2 if quick else 4]
    runs = {"all_cores": [], "one_thread": []}
    with Expander(config("embedded", quick, **{"embedded.engine": "llamacpp"})) as ex:
        every_core = ex.backend.implementation()
        engines = {"all_cores": every_core, "one_thread": LlamaCppEngine(every_core.model, threads=1)}
        for engine in engines.values():
            engine.load()
            warm_up(lambda request, params: engine.generate(request, 1, params))
        for _ in range(1 if quick else 2):  # alternated: other load on the machine hits both alike
            for name, engine in engines.items():
                ex.backend._impl = engine
                runs[name].append(measure(ex, phrases))
        ex.backend._impl = engines["all_cores"]
    mid = {name: {key: median([m[key] for m in r]) for key in ("tokens_per_s", "descriptions_per_s")}
           for name, r in runs.items()}
    return {**mid["all_cores"], "threads": every_core.threads, "one_thread": mid["one_thread"], "runs": runs}


def run(quick: bool = False) -> dict:
    t = transformers_runs(quick)
    b, s = t["batched"], t["one_at_a_time"]
    figures = [
        figure(f"transformers, {t['batch_size']} prompts per call: tokens/s", b["tokens_per_s"], s["tokens_per_s"],
               "tokens/s", against="one prompt per call"),
        figure(f"transformers, {t['batch_size']} prompts per call: descriptions/s", b["descriptions_per_s"],
               s["descriptions_per_s"], "descriptions/s", against="one prompt per call"),
    ]
    notes = [f"Model load (dequantised GGUF -> float32, once; later starts reuse a cached copy): {t['load_s']:.1f} s, "
             "not included."]
    llama = llamacpp_run(quick)
    if llama is None:
        notes.append("llama.cpp: not measured, llama-cpp-python is not installed (pip install llama-cpp-python).")
    elif "error" in llama:
        notes.append(f"llama.cpp: failed: {llama['error']}")
    else:
        figures += [
            figure("llama.cpp, one sample per call: tokens/s", llama["tokens_per_s"], b["tokens_per_s"], "tokens/s",
                   against=f"transformers, {t['batch_size']} prompts per call"),
            figure("llama.cpp, one sample per call: descriptions/s", llama["descriptions_per_s"],
                   b["descriptions_per_s"], "descriptions/s", against=f"transformers, {t['batch_size']} prompts per call"),
            figure(f"llama.cpp, {llama['threads']} threads (every core): tokens/s", llama["tokens_per_s"],
                   llama["one_thread"]["tokens_per_s"], "tokens/s", against="one thread, same phrases and seed"),
        ]
    return {"name": "generation", "title": f"Local generation: embedded SmolLM2-135M, k={K}, "
                                           f"{32 if quick else 128} new tokens at most, CPU",
            "figures": figures, "details": {"transformers": t, "llamacpp": llama}, "notes": notes}
