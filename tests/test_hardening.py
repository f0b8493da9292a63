"""Bad input at the edges: one line, exit 2, nothing paid for, nothing stored; no credential echoed."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fake_openai import Fault, FakeOpenAI
from test_faults import write_labels

KEY = "sk-HARDEN-1c9e4f77a2"
PASSWORD = "pw-in-url-93b1d0"


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "actiongpt_plugin", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def one_line(proc, text, code=2):
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actiongpt: error:") and text in lines[0], proc.stderr
    assert "unexpected" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


@pytest.mark.parametrize("where, text", [
    (lambda tmp: tmp, "it is a directory"),
    (lambda tmp: tmp / "labels.txt" / "pack.jsonl", "is a file, not a directory"),
    (lambda tmp: tmp / "labels.txt" / "deeper" / "pack.jsonl", "is a file, not a directory"),
    (lambda tmp: "/proc/actiongpt-pack.jsonl", "cannot write /proc/actiongpt-pack.jsonl"),
])
def test_unwritable_out_is_refused_before_paying(server, tmp_path, isolated_home, where, text):
    labels = write_labels(tmp_path / "labels.txt", ["jump", "walk"])
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
    proc = run("expand", "--file", str(labels), "-b", "openai", "--model", "m", "--out", str(where(tmp_path)), env=env)
    one_line(proc, text)
    assert server.count() == 0 and not (isolated_home / "store.sqlite").exists()


def test_credentials_in_the_base_url_never_shown_or_stored(server, tmp_path, isolated_home):
    server.add_faults(*[Fault.http(400, message="bad request")] * 2)
    url = server.base_url.replace("http://", f"http://user:{PASSWORD}@")
    env = {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": KEY, "OPENAI_LOG": "debug"}
    labels = write_labels(tmp_path / "labels.txt", ["jump", "walk", "sit"])
    pack = tmp_path / "pack.jsonl"
    proc = run("-v", "expand", "--file", str(labels), "-b", "openai", "--out", str(pack), env=env)
    assert proc.returncode == 1 and "HTTP 400" in proc.stderr  # two phrases refused, one expanded
    texts = proc.stdout + proc.stderr
    proc = run("config", "show", env=env)
    texts += proc.stdout + proc.stderr
    proc = run("store", "stats", env=env)
    texts += proc.stdout + proc.stderr
    assert PASSWORD not in texts and KEY not in texts
    files = [p for p in list(tmp_path.rglob("*")) + list(isolated_home.rglob("*")) if p.is_file()]
    assert any(p.name == "pack.jsonl.manifest.json" for p in files)
    for path in files:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and KEY.encode() not in data, path
    manifest = json.loads((tmp_path / "pack.jsonl.manifest.json").read_text())
    assert manifest["endpoint"] == server.base_url  # the server is named, without its credentials


def test_ordinary_errors_are_not_unexpected(tmp_path):
    pack = tmp_path / "p.jsonl"
    pack.write_text('{"phrase": "jump", "descriptions": ["The person jumps up high."]}\n')
    (tmp_path / "p.jsonl.manifest.json").write_text("{not json")
    one_line(run("pack", "import", str(pack)), "manifest")
    one_line(run("pack", "import", str(tmp_path / "missing.jsonl")), "not found")
    one_line(run("pack", "export", str(tmp_path)), "it is a directory")
    one_line(run("expand", "jump", "-b", "identity", "--out", str(pack / "x.jsonl")), "is a file")


def test_offline_does_not_block_a_pack(tmp_path):
    """--offline keeps paid backends from being asked; a pack is read, not asked, so it still serves."""
    from actiongpt_plugin import Expander, load_config

    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps({"jump": ["The person jumps up.", "The person leaps.", "A hop.", "A bound up."]}))
    cfg = load_config(backend="pack", **{"pack.path": str(release), "store.offline": True})
    with Expander(cfg) as ex:
        assert ex.expand(["jump"])["jump"][0] == "The person jumps up."  # offline does not block a free pack


def test_summary_counts_every_request_sent(server, tmp_path):
    """Refused (400) and retried-then-failed requests are paid attempts too: the summary counts them all."""
    from fake_openai import phrase_of

    def fault(record):
        phrase = phrase_of(record["body"]["messages"][-1]["content"])
        return {"jump": Fault.http(400, message="bad request"), "walk": 500}.get(phrase)

    server.on_request = fault
    labels = write_labels(tmp_path / "labels.txt", ["jump", "walk", "sit"])
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
    proc = run("expand", "--file", str(labels), "-b", "openai", "--model", "m", "--no-progress",
               "--set", "openai.max_retries=2", "--set", "openai.backoff_base=0.01", env=env)
    assert proc.returncode == 1
    assert server.count() == 1 + 3 + 1
    assert "3 phrases: 0 from the store, 1 expanded, 2 failed; 5 requests" in proc.stderr
