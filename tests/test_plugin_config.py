"""Plugins own their configuration: a third-party backend's options through the real CLI and a real
dist-info; pluggy's checks as one-line errors; every config rejection one line, without the value."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actiongpt_plugin.config import load_config, reference_yaml
from actiongpt_plugin.errors import ActionGPTError
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-shout-SECRET-5be1c7"


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "actiongpt_plugin", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def one_line_error(proc, text):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actiongpt: error:") and text in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def install(tmp_path, dist: str, module_file: Path, entry: str) -> dict:
    """A plugin made visible to importlib.metadata exactly as `pip install` would (a .dist-info)."""
    site = tmp_path / f"site-{dist}"
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[actiongpt]\n{entry} = {module_file.stem}\n")
    shutil.copy(module_file, site)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def shout(tmp_path):
    return install(tmp_path, "actiongpt-shout", ROOT / "examples" / "actiongpt-shout" / "actiongpt_shout.py", "shout")


def test_third_party_backend_options_through_set(shout):
    env = {**shout, "SHOUT_API_KEY": KEY}
    proc = run("expand", "jump", "-b", "shout", "-k", "2", "--json", "--set", "shout.style=loud",
               "--set", "shout.repeat=2", env=env)
    assert proc.returncode == 0, proc.stderr
    texts = json.loads(proc.stdout)["jump"]
    assert texts[0] == ("THE PERSON BENDS THE KNEES AND SWINGS BOTH ARMS, "
                        "THE PERSON BENDS THE KNEES AND SWINGS BOTH ARMS TO JUMP (TAKE 1).")
    default = json.loads(run("expand", "jump", "-b", "shout", "-k", "1", "--json", env=env).stdout)["jump"]
    assert default == ["The person bends the knees and swings both arms to jump (take 1)."]  # option defaults
    # Validation comes from the plugin's own declarations, with the valid choices and ranges.
    one_line_error(run("expand", "jump", "-b", "shout", "--set", "shout.style=whisper", env=env),
                   "bad value 'whisper' for config key 'shout.style'; valid choices: calm, loud")
    one_line_error(run("expand", "jump", "-b", "shout", "--set", "shout.repeat=9", env=env),
                   "config key 'shout.repeat': must be at least 1 and at most 5")
    one_line_error(run("expand", "jump", "-b", "shout", "--set", "shout.volume=3", env=env),
                   "unknown config key 'shout.volume'; valid keys here: api_key, style, repeat")
    # Without its key: the plugin's own one-line error, before anything else happens.
    one_line_error(run("expand", "jump", "-b", "shout", env=shout), "the shout backend needs an API key")


def test_third_party_section_in_config_show_and_docs(shout):
    env = {**shout, "SHOUT_API_KEY": KEY}
    cfg_file = Path(shout["PYTHONPATH"].split(os.pathsep)[0]).parent / "shout.yaml"
    cfg_file.write_text(f"shout:\n  api_key: {KEY}\n  style: loud\n")
    proc = run("config", "show", "--config", str(cfg_file), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "shout:\n  api_key: '***'\n  style: loud\n  repeat: 1\n" in proc.stdout and KEY not in proc.stdout
    docs = run("config", "docs", env=shout).stdout
    assert "shout:" in docs and "style: calm" in docs and "one of: calm | loud" in docs and "1..5" in docs
    plugins = {r["name"]: r for r in json.loads(run("plugins", "--json", env=shout).stdout)}
    assert plugins["shout"]["distribution"] == "actiongpt-shout" and plugins["shout"]["hooks"] == ["register_backends"]


def test_auto_picks_a_ready_third_party_backend(shout):
    code = "from actiongpt_plugin.expander import resolve_backend_name as r; from actiongpt_plugin import load_config as l; print(r(l()))"
    pick = lambda extra: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                        env={**os.environ, **shout, **extra}).stdout.strip()
    assert pick({}) == "embedded"  # no key: the offline default
    assert pick({"SHOUT_API_KEY": KEY}) == "shout"  # its key present: auto may pick it (auto=5)
    assert pick({"SHOUT_API_KEY": KEY, "OPENAI_API_KEY": "sk-x"}) == "openai"  # openai ranks higher (auto=10)


def test_misspelled_hook_is_one_line(tmp_path):
    module = tmp_path / "typo_plugin.py"
    module.write_text("from actiongpt_plugin import hookimpl\n\n@hookimpl\ndef regster_backends(register):\n"
                      "    pass\n")
    env = install(tmp_path, "actiongpt-typo", module, "typo")
    proc = run("expand", "jump", "-b", "identity", env=env)
    one_line_error(proc, "plugin 'typo' implements an unknown hook 'regster_backends' (misspelled?)")
    assert run("expand", "jump", "-b", "identity", env={**env, "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS": "1"}).returncode == 0


def test_hook_with_a_wrong_argument_is_one_line(tmp_path):
    module = tmp_path / "badarg_plugin.py"
    module.write_text("from actiongpt_plugin import hookimpl\n\n@hookimpl\ndef build_prompt(template, phrase, colour):\n"
                      "    return None\n")
    proc = run("expand", "jump", "-b", "identity", env=install(tmp_path, "actiongpt-badarg", module, "badarg"))
    one_line_error(proc, "plugin 'badarg' is invalid in hook build_prompt")
    assert "colour" in proc.stderr


# -- configuration rejections: one line, never the value -------------------------------------------
@pytest.mark.parametrize("override, message", [
    (f"openai={KEY}", "config key 'openai' is a section: set one of its keys, e.g. openai.api_key=..."),
    (f"sampling.temperature={KEY}", "bad value for config key 'sampling.temperature': expected float"),
    ("k=10000", "bad value 10000 for config key 'k': must be at least 1 and at most 64"),
    ("openai.timeout=-1", "bad value -1.0 for config key 'openai.timeout': must be at least"),
    ("openai.max_retries=-2", "bad value -2 for config key 'openai.max_retries': must be at least 0"),
    ("expand.concurrency=0", "config key 'expand.concurrency': must be at least 1"),
    ("sampling.top_p=1.5", "config key 'sampling.top_p': must be at least 0.0 and at most 1.0"),
])
def test_bad_values_are_one_line_without_the_value(override, message):
    with pytest.raises(ActionGPTError) as info:
        load_config(overrides=[override])
    text = str(info.value)
    assert message in text and "\n" not in text and KEY not in text


def test_yaml_that_is_not_a_mapping(tmp_path):
    for body in ("- k: 4\n- backend: openai\n", "just a string\n", "42\n"):
        path = tmp_path / "c.yaml"
        path.write_text(body)
        with pytest.raises(ActionGPTError, match="must be a mapping of keys"):
            load_config(path)
    one_line_error(run("expand", "jump", "-b", "identity", "--config", str(path)), "must be a mapping of keys")


def test_bad_values_cost_nothing(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\nwalk\n")
    with FakeOpenAI() as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
        for args, text in ((["-k", "10000"], "'k': must be at least 1 and at most 64"),
                           (["--set", "openai.timeout=-1"], "'openai.timeout'"),
                           (["--set", "openai.max_retries=-1"], "'openai.max_retries'"),
                           (["--concurrency", "0"], "'expand.concurrency'")):
            one_line_error(run("expand", "--file", str(labels), "-b", "openai", *args, env=env), text)
        one_line_error(run("expand", "jump\x01twice", "-b", "openai", env=env), "contains a control character")
        labels.write_bytes(b"jump\nwalk\x00twice\n")
        one_line_error(run("expand", "--file", str(labels), "-b", "openai", env=env), "contains a control character")
        assert server.count() == 0


def test_configuration_doc_is_generated_from_the_schema():
    """docs/configuration.md's reference block is exactly `actiongpt config docs` (built-in plugins)."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    block = text.split("```yaml", 1)[1].split("```", 1)[0].lstrip("\n")
    assert block == reference_yaml()


def test_samples_per_phrase_are_bounded():
    with pytest.raises(ActionGPTError, match="asks for 192 samples per phrase; at most 128"):
        load_config(k=64, **{"expand.oversample": 3.0})
    assert load_config(k=64, **{"expand.oversample": 2.0}).k == 64
