"""`expand --batch`: the OpenAI Batch API through the real openai client against the fake server."""
import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from actiongpt_plugin import Expander, load_config
from actiongpt_plugin.batch import BatchRunner
from actiongpt_plugin.store import DescriptionStore
from fake_openai import Fault, FakeOpenAI, phrase_of

KEY = "sk-batch-secret-4242"


@pytest.fixture
def server():
    with FakeOpenAI(model="gpt-4o-mini") as s:  # no model configured: the backend asks the server (GET /models)
        yield s


def config(server, **values):
    # The model is named: with none given, a non-OpenAI server is asked which model it serves (issue 9).
    return load_config(backend="openai", **{"openai.api_key": KEY, "openai.base_url": server.base_url,
                                            "openai.model": "gpt-4o-mini", **values})


def run_batch(server, phrases, log=None, sleep=None, **values):
    with Expander(config(server, **values)) as expander:
        runner = BatchRunner(expander, poll_interval=0.01, log=(log.append if log is not None else None),
                             **({"sleep": sleep} if sleep else {}))
        return runner.run(phrases)


def creates(server):
    return server.batch_requests("POST", "/v1/batches")


def uploads(server):
    return server.batch_requests("POST", "/v1/files")


def uploaded_lines(server, index=-1):
    file_id = creates(server)[index]["body"]["input_file_id"]
    return [json.loads(line) for line in server.files[file_id]["data"].decode().splitlines()]


def phrase_in(line) -> str:
    body = line["body"]
    return phrase_of(body["messages"][-1]["content"] if "messages" in body else body["prompt"])


@pytest.mark.parametrize("api, endpoint", [("chat", "/v1/chat/completions"), ("completions", "/v1/completions")])
def test_submit_poll_collect_then_rerun_is_free(server, isolated_home, api, endpoint):
    server.batch_polls = 3
    log = []
    result = run_batch(server, ["jump", "sit down", "jump "], log=log, **{"openai.api": api})
    assert set(result.descriptions) == {"jump", "sit down", "jump "}
    assert all(len(d) == 4 for d in result.descriptions.values()) and not result.stats.failures
    # One upload, one batch, polled until done; no live completion request at all.
    (upload,) = uploads(server)
    assert upload["body"]["purpose"] == "batch"
    (create,) = creates(server)
    assert create["body"]["endpoint"] == endpoint and create["body"]["completion_window"] == "24h"
    batch_id = next(iter(server.batches))
    assert len(server.batch_requests("GET", f"/v1/batches/{batch_id}")) == 3
    assert server.count("completions") == 0
    # custom_id is the store key: the pack rows carry the same keys.
    lines = uploaded_lines(server)
    assert sorted(line["custom_id"] for line in lines) == sorted(row["key"] for row in result.rows)
    assert all(line["url"] == endpoint and line["body"]["n"] == 4 for line in lines)
    assert all(line["body"]["model"] == "gpt-4o-mini" and line["body"]["temperature"] == 0.5 for line in lines)
    # Usage recorded as the batch reported it.
    output = server.files[server.batches[batch_id]["output_file_id"]]["data"].decode().splitlines()
    usage = [json.loads(line)["response"]["body"]["usage"] for line in output]
    assert result.stats.prompt_tokens == sum(u["prompt_tokens"] for u in usage) > 0
    assert result.stats.completion_tokens == sum(u["completion_tokens"] for u in usage) > 0
    assert (result.stats.requests, result.stats.expanded, result.stats.cache_hits) == (2, 2, 0)
    assert log[0] == f"submitted batch {batch_id}: 2 requests" and log[-1].startswith(f"collected batch {batch_id}")
    # A rerun, batch or live, finds everything in the store: nothing uploaded, submitted or requested.
    again = run_batch(server, ["sit down", "jump"], **{"openai.api": api})
    assert again.descriptions == {"sit down": result.descriptions["sit down"], "jump": result.descriptions["jump"]}
    assert again.stats.cache_hits == 2 and len(creates(server)) == 1 and len(uploads(server)) == 1
    with Expander(config(server, **{"openai.api": api})) as expander:
        live = expander.run(["jump", "sit down"])
    assert live.stats.cache_hits == 2 and server.count("completions") == 0
    # The key went out in headers only: not in the store or the log.
    assert set(server.authorizations) == {f"Bearer {KEY}"}
    assert all(KEY.encode() not in p.read_bytes() for p in isolated_home.iterdir())
    assert KEY not in "\n".join(log)


def test_partial_failures_are_reported_and_only_they_are_resubmitted(server):
    faults = {"swim": Fault.http(500, message="upstream hiccup"), "fly": "empty", "kick": Fault("fewer", choices=2)}
    server.on_batch_line = lambda line: faults.get(phrase_in(line))
    result = run_batch(server, ["jump", "swim", "fly", "kick"])
    assert set(result.descriptions) == {"jump"}
    assert result.stats.failures == {
        "swim": "batch request failed: HTTP 500: upstream hiccup",
        "fly": "only 0 of 4 usable descriptions; run again to submit the rest",
        "kick": "only 2 of 4 usable descriptions; run again to submit the rest",
    }
    server.on_batch_line = None
    again = run_batch(server, ["jump", "swim", "fly", "kick"])
    assert not again.stats.failures and all(len(d) == 4 for d in again.descriptions.values())
    assert again.descriptions["jump"] == result.descriptions["jump"]
    # The second batch asked only for what was missing: 2 more for kick, 4 for the others.
    assert len(creates(server)) == 2
    assert {phrase_in(line): line["body"]["n"] for line in uploaded_lines(server)} == {"swim": 4, "fly": 4, "kick": 2}
    assert again.stats.cache_hits == 1 and again.stats.expanded == 3


def test_expired_and_cancelled_batches(server):
    server.on_batch_line = lambda line: "drop" if phrase_in(line) == "run" else None  # never ran: the batch expires
    result = run_batch(server, ["jump", "run"])
    batch_id = next(iter(server.batches))
    assert server.batches[batch_id]["status"] == "expired"
    assert set(result.descriptions) == {"jump"}
    assert result.stats.failures == {"run": f"batch {batch_id} expired before this request ran"}
    # Cancelled from elsewhere (the dashboard) while we poll.
    server.on_batch_line, server.batch_hold = None, True
    client = openai.OpenAI(api_key=KEY, base_url=server.base_url)

    def cancel_then_wait(seconds):
        for b in client.batches.list():
            if b.status == "in_progress":
                client.batches.cancel(b.id)

    result = run_batch(server, ["jump", "run"], sleep=cancel_then_wait)
    assert result.stats.failures["run"].endswith("cancelled before this request ran")
    assert "jump" in result.descriptions and result.stats.cache_hits == 1


def test_failed_batch_fails_its_phrases_and_frees_them(server):
    server.batch_error = {"code": "token_limit_exceeded", "message": "Enqueued token limit reached for gpt-4o-mini"}
    result = run_batch(server, ["jump", "run"])
    batch_id = next(iter(server.batches))
    assert result.descriptions == {}
    assert result.stats.failures == {p: f"batch {batch_id} failed: Enqueued token limit reached for gpt-4o-mini"
                                     for p in ("jump", "run")}
    server.batch_error = None
    assert set(run_batch(server, ["jump", "run"]).descriptions) == {"jump", "run"}
    assert len(creates(server)) == 2


def test_crash_between_recording_and_creating_never_pays_twice(server, isolated_home, monkeypatch):
    from actiongpt_plugin import store as store_module

    # Killed right after batches.create returned, before its id reached the store.
    def killed(self, submission, status, batch_id=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(store_module.DescriptionStore, "set_batch", killed)
        with pytest.raises(KeyboardInterrupt):
            run_batch(server, ["jump", "run"])
    with DescriptionStore(isolated_home / "store.sqlite") as store:
        (record,) = store.open_batches()
    assert record["batch_id"] is None and record["status"] == "submitting"
    log = []
    result = run_batch(server, ["jump", "run"], log=log)
    (batch_id,) = server.batches
    assert len(creates(server)) == 1 and set(result.descriptions) == {"jump", "run"}
    assert f"resuming batch {batch_id} (2 requests, validating)" in log
    assert server.batches[batch_id]["metadata"] == {"actiongpt_submission": record["submission"]}

    # Killed before batches.create reached the server: nothing to adopt, so it is submitted once more.
    def refused(self, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(openai.resources.batches.Batches, "create", refused)
        with pytest.raises(KeyboardInterrupt):
            run_batch(server, ["walk"])
    result = run_batch(server, ["walk"])
    assert set(result.descriptions) == {"walk"} and len(creates(server)) == 2
    with DescriptionStore(isolated_home / "store.sqlite") as store:
        assert store.open_batches() == []


def test_other_phrases_open_batch_is_left_alone(server):
    server.batch_hold = True

    def interrupt(seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(server, ["jump"], sleep=interrupt)
    server.batch_hold = False
    log = []
    result = run_batch(server, ["run"], log=log)
    assert set(result.descriptions) == {"run"} and len(creates(server)) == 2
    assert "1 other open batch(es) in the store are for other phrases; left alone" in log
    jump_batch = next(iter(server.batches))
    assert server.batches[jump_batch]["status"] == "in_progress"  # never polled by the "run" run


def test_batch_needs_the_openai_backend_and_the_store(server):
    from actiongpt_plugin.errors import ActionGPTError

    with pytest.raises(ActionGPTError, match="--batch needs the openai backend"):
        BatchRunner(Expander(backend="identity"))
    with pytest.raises(ActionGPTError, match="needs the description store"):
        BatchRunner(Expander(config(server, **{"store.enabled": False})))


def test_bad_key_is_one_line_and_not_echoed(server):
    from actiongpt_plugin.errors import FatalBackendError

    original = server.batch_api

    def unauthorized(method, path, query, raw, content_type, record):
        if path == "/v1/files":
            return 401, {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "auth"}}, "application/json"
        return original(method, path, query, raw, content_type, record)

    server.batch_api = unauthorized
    with pytest.raises(FatalBackendError) as info:
        run_batch(server, ["jump"], **{"openai.max_retries": 0})
    message = str(info.value)
    assert "HTTP 401" in message and KEY not in message and "\n" not in message


def test_refused_submission_leaves_nothing_open(server, isolated_home):
    from actiongpt_plugin.errors import ActionGPTError

    original = server.batch_api

    def refuse(method, path, *rest):
        if (method, path) == ("POST", "/v1/batches"):
            return 400, {"error": {"message": "model not available for batch", "type": "invalid"}}, "application/json"
        return original(method, path, *rest)

    server.batch_api = refuse
    with pytest.raises(ActionGPTError, match="^OpenAI Batch API: HTTP 400: model not available for batch$"):
        run_batch(server, ["jump"])
    with DescriptionStore(isolated_home / "store.sqlite") as store:
        assert store.open_batches() == []
    server.batch_api = original
    assert set(run_batch(server, ["jump"]).descriptions) == {"jump"}


# -- the command, interrupted and resumed ------------------------------------------------------------
def cli(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "actiongpt_plugin", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_interrupted_mid_poll_resumes_the_same_batch(server, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nrun\nwave\n")
    out = tmp_path / "pack.jsonl"
    args = ["expand", "--file", str(labels), "--batch", "--poll-interval", "0.05", "--out", str(out), "-b", "openai",
            "--set", f"openai.base_url={server.base_url}"]
    env = {"OPENAI_API_KEY": KEY}
    server.batch_hold = True
    proc = cli(args, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(server.batch_requests("GET", "/v1/batches/")) < 2:  # polling
        time.sleep(0.05)
    assert server.batches, proc.communicate(timeout=10)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while polling
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "submitted batch" in err and KEY not in err
    (batch_id,) = server.batches

    server.batch_hold = False
    proc = cli(args, env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"resuming batch {batch_id} (3 requests, in_progress)" in err
    assert "3 phrases: 0 from the store, 3 expanded, 0 failed" in err and KEY not in err
    assert len(creates(server)) == 1 and len(uploads(server)) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phrase"] for r in rows] == ["jump", "run", "wave"] and all(len(r["descriptions"]) == 4 for r in rows)


def test_cli_batch_with_another_backend_is_one_line(capsys):
    from actiongpt_plugin.cli import main

    with pytest.raises(SystemExit) as info:
        main(["expand", "jump", "--batch", "-b", "identity"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "actiongpt: error: --batch needs the openai backend (the OpenAI Batch API), not 'identity'"
