"""The openai backend against servers that behave like the real local ones (llama.cpp's server, Ollama):
one request at a time, `n` ignored, no model named, long or dated Retry-After, nothing listening.
The real openai client and CLI against tests/fake_openai.py on 127.0.0.1; real SQLite."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from actiongpt_plugin import Expander, load_config
from actiongpt_plugin.backends.base import Request, SamplingParams
from actiongpt_plugin.backends.openai_backend import OpenAIBackend, public_url, retry_after
from actiongpt_plugin.cli import main as cli_main
from actiongpt_plugin.errors import ActionGPTError, FatalBackendError
from actiongpt_plugin.store import DescriptionStore, make_key
from actiongpt_plugin.templates import RELEASE
from fake_openai import Fault, FakeOpenAI, closed_port_url

FAST = {"openai.backoff_base": 0.01, "openai.backoff_max": 0.05}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACTIONGPT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def backend(base_url=None, **values) -> OpenAIBackend:
    settings = {"openai.base_url": base_url, "openai.timeout": 5.0, **FAST, **values}
    return OpenAIBackend(load_config(**settings))


def request(phrase="jump") -> Request:
    return Request(phrase, RELEASE.render(phrase))


def complete(b, requests, k=4, params=SamplingParams()):
    async def go():
        try:
            return await b.complete_batch(requests, k, params)
        finally:
            await b.aclose()

    return asyncio.run(go())


def cli(*args, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main(list(args))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


# -- which model, which server: the store key names both ---------------------------------------------

def test_model_asked_of_a_local_server_and_named_in_the_identity():
    with FakeOpenAI(model="SmolLM2-135M-Instruct") as server:
        b = backend(server.base_url)
        assert b.identity() == {"model": "SmolLM2-135M-Instruct", "endpoint": server.base_url}
        [c] = complete(b, [request()])
        assert server.requests[-1]["body"]["model"] == "SmolLM2-135M-Instruct" and len(c.texts) == 4


def test_identity_of_the_official_api_is_unchanged():
    b = backend(None, **{"openai.api_key": "sk-x"})
    assert b.identity() == {"model": "gpt-4o-mini"}  # no endpoint, no api: keys of existing stores stay valid
    legacy = backend(None, **{"openai.api_key": "sk-x", "openai.api": "completions"})
    assert legacy.identity() == {"model": "gpt-4o-mini", "api": "completions"}
    explicit = backend("https://api.openai.com/v1/", **{"openai.api_key": "sk-x", "openai.model": "gpt-4.1"})
    assert explicit.identity() == {"model": "gpt-4.1"}


def test_store_keys_differ_per_server_and_api():
    prompt = RELEASE.render("jump")

    def key(identity):
        return make_key(backend="openai", identity=identity, template_name="actiongpt", template_version="1",
                        template_fingerprint="f", prompt=prompt, params={}, k=4)

    official = backend(None, **{"openai.api_key": "sk-x"})
    with FakeOpenAI(model="gpt-4o-mini") as a, FakeOpenAI(model="gpt-4o-mini") as b:
        keys = {key(official.identity()), key(backend(a.base_url).identity()), key(backend(b.base_url).identity()),
                key(backend(a.base_url, **{"openai.api": "completions"}).identity())}
    assert len(keys) == 4
    assert key(official.identity()) == key({"model": "gpt-4o-mini"})  # what stores made before hold


def test_endpoint_drops_credentials_and_trailing_slash():
    assert public_url("http://user:secret@127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/v1"
    assert public_url("https://api.openai.com/v1?x=1") == "https://api.openai.com/v1"


def test_several_models_is_a_one_line_error_listing_them():
    with FakeOpenAI(models=["llama3", "qwen2.5", "smollm2"]) as server:
        b = backend(server.base_url)
        with pytest.raises(ActionGPTError) as err:
            b.identity()
    message = str(err.value)
    assert "\n" not in message and "llama3, qwen2.5, smollm2" in message and "pass --model" in message


@pytest.mark.parametrize("model", [None, "named-model"])
def test_nothing_listening_is_one_fatal_line_within_seconds(model):
    url = closed_port_url()
    b = backend(url, **{"openai.model": model, "openai.max_retries": 5, "openai.backoff_base": 1.0})
    start = time.monotonic()
    with pytest.raises(FatalBackendError) as err:
        complete(b, [request("jump"), request("walk")])
    assert time.monotonic() - start < 5  # no backoff rounds: 5 retries at 1 s base would take 15 s+
    assert str(err.value) == f"cannot reach the server at {url}: connection refused"


def test_refused_after_a_success_is_retried_not_fatal():
    with FakeOpenAI() as server:
        b = backend(server.base_url, **{"openai.model": "m", "openai.max_retries": 1})

        async def go():
            first = await b.complete(request(), 2, SamplingParams())
            server.stop()  # the server goes away mid-run: a passing fault from now on
            await b.aclose()  # no kept-alive connection left: the next one is refused
            second = await b.complete(request("walk"), 2, SamplingParams())
            await b.aclose()
            return first, second

        first, second = asyncio.run(go())
    assert len(first.texts) == 2
    assert second.texts == [] and second.requests == 2 and "failed after 2 attempt(s)" in second.error


def test_cli_refused_connection_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACTIONGPT_HOME", str(tmp_path))
    url = closed_port_url()
    code, out, err = cli("expand", "jump", "walk", "--backend", "openai", "--set", f"openai.base_url={url}",
                         capsys=capsys)
    lines = err.strip().splitlines()
    assert code != 0 and out == "" and len(lines) == 1, err
    assert f"cannot reach the server at {url}: connection refused" in lines[0]


# -- servers that ignore n ----------------------------------------------------------------------------

def test_server_ignoring_n_gets_k_requests_with_distinct_seeds():
    with FakeOpenAI(ignore_n=True, seeded=True) as server:
        b = backend(server.base_url, **{"openai.model": "m"})
        params = SamplingParams(seed=11)
        first, second = complete(b, [request("jump"), request("walk")], k=8, params=params)
    assert b.ignores_n
    for c, phrase in ((first, "jump"), (second, "walk")):
        assert len(c.texts) == 8 == len(set(c.texts)) and all(phrase in t for t in c.texts)
        assert c.finish_reasons == ["stop"] * 8
    bodies = [r["body"] for r in server.requests]
    # Each phrase: seeds 11..18 exactly once (one request may have asked n=8 before the server was known).
    for phrase in ("jump", "walk"):
        seeds = sorted(bd["seed"] for bd in bodies if phrase in bd["messages"][-1]["content"])
        assert seeds == list(range(11, 19))
    assert first.requests + second.requests == server.count() == 16


def test_server_ignoring_n_with_a_fixed_seed_gives_no_duplicates_even_when_answers_repeat():
    # The default content repeats for equal (prompt, choice index): two requests answered alike.
    with FakeOpenAI(ignore_n=True) as server:
        [c] = complete(backend(server.base_url, **{"openai.model": "m"}), [request()], k=4,
                       params=SamplingParams(seed=3))
    assert server.count() == 4 and c.requests == 4
    assert len(c.texts) == 1 == len(set(c.texts))  # three exact repeats dropped where gathered


def test_greedy_against_a_server_ignoring_n_asks_once_and_gives_the_answer_k_times():
    with FakeOpenAI(ignore_n=True) as server:
        b = backend(server.base_url, **{"openai.model": "m"})
        first, second = complete(b, [request("jump"), request("walk")], k=4, params=SamplingParams(temperature=0))
    assert b.ignores_n
    # The first phrase learnt the server ignores n (one request for n=4); the second asks once.
    assert len(first.texts) == len(second.texts) == 4 and len(set(second.texts)) == 1
    assert server.count() == 2 and first.requests + second.requests == 2


def test_asking_a_prompt_again_continues_the_seeds():
    # The expander re-asks for samples that cleaning rejected: with a fixed seed, the same seeds would
    # bring back the same answers from a deterministic server.
    with FakeOpenAI(ignore_n=True, seeded=True) as server:
        b = backend(server.base_url, **{"openai.model": "m"})

        async def go():
            first = await b.complete(request(), 3, SamplingParams(seed=5))
            again = await b.complete(request(), 2, SamplingParams(seed=5))
            other = await b.complete(request("walk"), 2, SamplingParams(seed=5))
            await b.aclose()
            return first, again, other

        first, again, other = asyncio.run(go())
    seeds = [r["body"]["seed"] for r in server.requests]
    assert sorted(seeds[:3]) == [5, 6, 7] and sorted(seeds[3:5]) == [8, 9] and sorted(seeds[5:]) == [5, 6]
    assert len(set(first.texts + again.texts)) == 5


def test_cli_k8_against_a_server_that_ignores_n(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACTIONGPT_HOME", str(tmp_path))
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nwave the right hand\n")
    with FakeOpenAI(ignore_n=True, seeded=True, model="SmolLM2") as server:
        code, out, err = cli("expand", "--file", str(labels), "-k", "8", "--json", "--backend", "openai",
                             "--set", f"openai.base_url={server.base_url}", "--set", "sampling.seed=5",
                             capsys=capsys)
        received = server.count("/chat/completions")
    assert code == 0, err
    result = json.loads(out)
    assert all(len(v) == 8 == len(set(v)) for v in result.values())
    assert f"2 expanded, 0 failed; {received} requests" in err  # every request the server received is counted
    with DescriptionStore(tmp_path / "store.sqlite") as store:
        rows = list(store.rows())
    assert len(rows) == 2 and all(r["model"] == "SmolLM2" for r in rows)


# -- one request at a time: the adaptive window ----------------------------------------------------

def expand_against_serial(tmp_path, n, service=0.05, **values):
    """n phrases against a one-at-a-time server with a client timeout of 7 x its service time."""
    with FakeOpenAI(latency=service, serial=True) as server:
        cfg = load_config(backend="openai", **{
            "openai.base_url": server.base_url, "openai.model": "m", "openai.timeout": 7 * service,
            "store.path": str(tmp_path / f"{values}.sqlite"), **values})
        with Expander(cfg) as ex:
            result = ex.run([f"move number {i}" for i in range(n)])
            window = ex.backend.limiter.state()
        deadline = time.monotonic() + 30  # requests whose client gave up are still queued: let them through
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()
        return result, server, window


def test_adaptive_window_keeps_a_one_at_a_time_server_from_timing_out(tmp_path):
    result, server, window = expand_against_serial(tmp_path, 30, service=0.1)  # slower: robust on a busy machine
    assert not result.stats.failures and len(result.descriptions) == 30
    assert server.abandoned <= 2  # at most a stray timeout while it learns
    assert window["max_in_flight"] <= 8 and window["decreases"] >= 1
    assert result.stats.requests == server.count()


def test_fixed_32_overwhelms_a_one_at_a_time_server_and_counts_every_request(tmp_path):
    result, server, window = expand_against_serial(tmp_path, 40, **{
        "openai.adaptive": False, "openai.max_retries": 1, **FAST})
    assert window["max_in_flight"] == 32
    assert server.abandoned > 10  # what the adaptive window avoids
    assert result.stats.requests == server.count()  # failed attempts included


def test_window_reaches_the_ceiling_on_a_server_that_scales():
    with FakeOpenAI(latency=0.1) as server:
        b = backend(server.base_url, **{"openai.model": "m", "openai.concurrency": 16})
        complete(b, [request(f"move {i}") for i in range(64)], k=1)
    assert b.limiter.state()["max_in_flight"] == 16 == server.max_in_flight
    assert b.limiter.decreases == 0


# -- waiting as told, but not forever ---------------------------------------------------------------

def test_retry_after_as_an_http_date_is_honoured():
    assert 29 <= retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=1445412480) <= 31
    assert retry_after({"retry-after": "not a date"}) is None
    with FakeOpenAI() as server:
        server.add_faults(Fault.http(429, retry_after=2, retry_after_date=True))
        [c] = complete(backend(server.base_url, **{"openai.model": "m"}), [request()])
        gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert c.requests == 2 and len(c.texts) == 4
    assert gap >= 1.0  # HTTP dates have whole seconds: 2 s from now is more than 1 s away


def test_long_retry_after_is_capped_by_max_wait_and_said(caplog):
    with FakeOpenAI() as server:
        server.add_faults(Fault.http(429, retry_after=600))
        b = backend(server.base_url, **{"openai.model": "m", "openai.max_wait": 0.5})
        with caplog.at_level(logging.INFO, logger="actiongpt"):
            [c] = complete(b, [request()])
        gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert c.requests == 2 and len(c.texts) == 4
    assert 0.5 <= gap < 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "600 s" in warnings[0] and "openai.max_wait" in warnings[0]


# -- answers that must not be stored ----------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [
    ("The person raises both arms and then slowly bends the", "length"),  # cut off in its first sentence
    ("The person jumps. " * 3000, "stop"),  # 54,000 characters: the server ignored max_tokens
])
def test_runaway_or_cut_off_answers_are_never_stored(tmp_path, content, reason):
    with FakeOpenAI(content=lambda path, body, i: content) as server:
        server.finish_reason = reason
        cfg = load_config(backend="openai", **{"openai.base_url": server.base_url, "openai.model": "m",
                                               "store.path": str(tmp_path / "s.sqlite"), "expand.attempts": 1})
        with Expander(cfg) as ex:
            result = ex.run(["jump"])
    assert result.descriptions == {} and "only 0 of 4" in result.stats.failures["jump"]
    with DescriptionStore(tmp_path / "s.sqlite") as store:
        assert all(row["descriptions"] == [] for row in store.rows())
    assert server.count() == 2  # asked again once (expand.attempts=1), never stored


def test_cut_off_answer_keeps_its_complete_sentences(tmp_path):
    text = "The person bends both knees and leaps upward. Then the person lands softly on"
    with FakeOpenAI(content=lambda path, body, i: text + " " * i) as server:
        server.finish_reason = "length"
        cfg = load_config(backend="openai", k=1, **{"openai.base_url": server.base_url, "openai.model": "m",
                                                    "store.enabled": False})
        with Expander(cfg) as ex:
            result = ex.run(["jump"])
    assert result.descriptions == {"jump": ["The person bends both knees and leaps upward."]}


def test_cli_says_on_stderr_when_it_waits_long(tmp_path):
    # A real process: without --verbose, only warnings reach stderr (here: the capped Retry-After).
    import os
    import subprocess
    import sys

    with FakeOpenAI() as server:
        url = server.base_url
        server.add_faults(Fault.http(429, retry_after=600))
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        env.update(ACTIONGPT_HOME=str(tmp_path), ACTIONGPT_DISABLE_EXTERNAL_PLUGINS="1")
        proc = subprocess.run([sys.executable, "-m", "actiongpt_plugin", "expand", "jump", "--backend", "openai",
                               "--set", f"openai.base_url={server.base_url}", "--set", "openai.model=m",
                               "--set", "openai.max_wait=0.5"],
                              capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("jump\n")
    assert f"HTTP 429 from {url}: waiting 0.5 s before retrying" in proc.stderr
    assert "the server asked for 600 s, capped by openai.max_wait" in proc.stderr
