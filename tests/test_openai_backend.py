"""The openai backend: the real openai client against the fake OpenAI-compatible server."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from actiongpt_plugin.backends.base import Request, SamplingParams
from actiongpt_plugin.backends.openai_backend import NO_KEY, OpenAIBackend
from actiongpt_plugin.config import load_config
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.plugins import get_registry
from actiongpt_plugin.templates import FEW_SHOT, RELEASE
from fake_openai import Fault, FakeOpenAI

KEY = "sk-test-secret-1234567890"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACTIONGPT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def make_backend(server=None, **values) -> OpenAIBackend:
    # The model is named: with none, a local server is asked for its one model (tests below).
    settings = {"openai.api_key": KEY, "openai.model": "gpt-4o-mini", "openai.backoff_base": 0.01,
                "openai.backoff_max": 0.05, "openai.timeout": 5.0}
    if server is not None:
        settings["openai.base_url"] = server.base_url
    settings.update(values)
    return OpenAIBackend(load_config(**settings))


def request(phrase="jump", template=RELEASE) -> Request:
    return Request(phrase, template.render(phrase))


def complete(backend, requests, k=4, params=SamplingParams(), close=True):
    async def go():
        try:
            return await backend.complete_batch(requests, k, params)
        finally:
            if close:
                await backend.aclose()

    return asyncio.run(go())


def test_registered_as_plugin(server):
    cfg = load_config(**{"openai.api_key": KEY, "openai.base_url": server.base_url, "openai.concurrency": 7,
                         "openai.model": "gpt-4o-mini"})
    backend = get_registry().backend("openai")(cfg)
    assert isinstance(backend, OpenAIBackend)
    assert (backend.name, backend.model, backend.batch_size, backend.concurrency) == ("openai", "gpt-4o-mini", 1, 7)


def test_chat_asks_for_k_samples_in_one_request(server):
    req = request("jump")
    [c] = complete(make_backend(server), [req], k=4)
    assert len(c.texts) == 4 and len(set(c.texts)) == 4
    assert all("jump" in t and len(t.split()) >= 8 for t in c.texts)
    assert c.requests == 1 and server.count() == 1
    rec = server.requests[0]
    assert rec["path"] == "/v1/chat/completions"
    assert rec["body"]["n"] == 4
    assert rec["body"]["model"] == "gpt-4o-mini"
    assert rec["body"]["messages"] == req.prompt.as_messages()
    assert "seed" not in rec["body"]
    # The key is sent, but kept out of the recorded headers and out of the stored raw reply.
    assert server.authorizations == [f"Bearer {KEY}"]
    assert "authorization" not in rec["headers"]
    assert KEY not in json.dumps(c.raw)
    assert c.raw["usage"]["prompt_tokens"] == c.prompt_tokens == len(req.prompt.text.split())
    assert c.completion_tokens == sum(len(t.split()) for t in c.texts)


def test_legacy_completions_use_prompt_text(server):
    req = request("kick", FEW_SHOT)
    [c] = complete(make_backend(server, **{"openai.api": "completions"}), [req], k=3)
    rec = server.requests[0]
    assert rec["path"] == "/v1/completions"
    assert rec["body"]["prompt"] == req.prompt.text and "messages" not in rec["body"]
    assert rec["body"]["n"] == 3
    assert len(c.texts) == 3 and all("kick" in t for t in c.texts)
    assert c.raw["object"] == "text_completion"


def test_sampling_params_and_model_override_forwarded(server):
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64, frequency_penalty=0.1, presence_penalty=0.2, seed=7)
    backend = make_backend(server, model="my-local-model")
    assert backend.model == "my-local-model"
    complete(backend, [request()], k=2, params=params)
    body = server.requests[0]["body"]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed")} == {
        "model": "my-local-model",
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "seed": 7,
    }


def test_concurrency_limit_respected():
    with FakeOpenAI(latency=0.3) as server:
        backend = make_backend(server, **{"openai.concurrency": 3})
        assert backend.concurrency == 3
        phrases = [f"action {i}" for i in range(8)]
        results = complete(backend, [request(p) for p in phrases], k=2)
    assert [len(c.texts) for c in results] == [2] * 8
    assert server.count() == 8
    assert server.max_in_flight == 3  # never more than the limit, and it was reached


def gap(server) -> float:
    return server.requests[1]["time"] - server.requests[0]["time"]


@pytest.mark.parametrize("fault, floor", [(Fault.http(429, retry_after=0.3), 0.3), (Fault.http(429, retry_after_ms=250), 0.25)])
def test_rate_limit_waits_as_told(server, fault, floor):
    server.add_faults(fault)
    [c] = complete(make_backend(server), [request()])
    assert c.requests == 2 and len(c.texts) == 4
    assert gap(server) >= floor  # backoff_base is 0.01 s: only the header explains this wait


@pytest.mark.parametrize("fault", [500, 503, 408, "drop", "malformed", "no_choices"])
def test_transient_failure_then_success(server, fault):
    server.add_faults(fault)
    [c] = complete(make_backend(server), [request()])
    assert c.requests == 2 and server.count() == 2
    assert len(c.texts) == 4


def test_timeout_then_success(server):
    server.add_faults(Fault("timeout", seconds=3))
    [c] = complete(make_backend(server, **{"openai.timeout": 0.5}), [request()])
    assert c.requests == 2 and len(c.texts) == 4


def test_fewer_choices_and_empty_content_returned_as_is(server):
    server.add_faults(Fault("fewer", choices=2), "empty")
    first, second = complete(make_backend(server, **{"openai.concurrency": 1}), [request("jump"), request("run")])
    assert len(first.texts) == 2 and all("jump" in t for t in first.texts)
    assert second.texts == ["", "", "", ""]
    assert first.requests == second.requests == 1


def test_retries_exhausted_is_one_line_error(server):
    server.add_faults(500, 500, 500, 500)
    # Returned, not raised, so that the attempts are counted (the expander records the error).
    [c] = complete(make_backend(server, **{"openai.max_retries": 2}), [request()])
    assert c.texts == [] and c.requests == 3
    message = c.error
    assert "\n" not in message
    assert "3 attempt(s)" in message and "HTTP 500" in message and server.base_url in message
    assert server.count() == 3


def test_rejected_key_fails_at_once_without_leaking_it(server):
    server.add_faults(Fault.http(401, message=f"Incorrect API key provided: {KEY}"))
    with pytest.raises(ActionGPTError) as err:
        complete(make_backend(server), [request()])
    assert server.count() == 1
    assert "401" in str(err.value) and KEY not in str(err.value) and "\n" not in str(err.value)


def test_unknown_model_fails_at_once(server):
    server.add_faults(404)
    with pytest.raises(ActionGPTError, match="unknown model 'gpt-4o-mini'"):
        complete(make_backend(server), [request()])
    assert server.count() == 1


def test_other_client_error_shows_server_message_with_key_redacted(server):
    server.add_faults(Fault.http(400, message=f"max_tokens is too large\nfor key {KEY}"))
    with pytest.raises(ActionGPTError) as err:
        complete(make_backend(server), [request()])
    message = str(err.value)
    assert "HTTP 400" in message and "max_tokens is too large" in message
    assert KEY not in message and "\n" not in message
    assert server.count() == 1


def test_base_url_and_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    [c] = complete(make_backend(**{"openai.api_key": None}), [request()])
    assert len(c.texts) == 4
    assert server.authorizations == ["Bearer sk-from-env"]


def test_local_server_without_key_gets_placeholder(server):
    [c] = complete(make_backend(server, **{"openai.api_key": None}), [request()])
    assert len(c.texts) == 4
    assert server.authorizations == ["Bearer EMPTY"]


def test_missing_key_is_a_clear_error():
    with pytest.raises(ActionGPTError) as err:
        make_backend(**{"openai.api_key": None})
    assert str(err.value) == NO_KEY


def test_backend_survives_a_new_event_loop(server):
    # A synchronous caller may asyncio.run() each batch with the same backend.
    backend = make_backend(server)
    complete(backend, [request("jump")], close=False)
    [c] = complete(backend, [request("run")])
    assert all("run" in t for t in c.texts) and server.count() == 2


def test_fake_server_runs_as_a_script():
    script = Path(__file__).with_name("fake_openai.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("OPENAI_BASE_URL=http://127.0.0.1:")
        with urllib.request.urlopen(line.split("=", 1)[1] + "/models", timeout=5) as reply:
            assert json.load(reply)["data"][0]["id"] == "fake-model"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
