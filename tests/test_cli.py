"""The `actiongpt` command as a user runs it: a real process, real files, real SQLite."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "actiongpt-uppercase"


def run(*args, env=None, input=None):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "actiongpt_plugin", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=120)
    return proc


def assert_one_line_error(proc, text):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("actiongpt: error:"), proc.stderr
    assert text in lines[0]


def test_expand_identity_human_and_json():
    proc = run("expand", "jump", "--backend", "identity", "-k", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "jump\n  1. jump\n  2. jump\n"
    proc = run("expand", "jump", "sit down", "--backend", "identity", "-k", "1", "--json")
    assert json.loads(proc.stdout) == {"jump": ["jump"], "sit down": ["sit down"]}


@pytest.mark.parametrize(
    "args, text",
    [
        (["expand", ""], "empty phrase"),
        (["expand", "   "], "empty phrase"),
        (["expand", "x" * 10_000], "too long"),
        (["expand", "jump", "--template", "nope"], "unknown template 'nope'; valid choices: actiongpt"),
        (["expand", "jump", "--backend", "nope"], "unknown backend 'nope'; valid choices:"),
        (["expand", "jump", "--set", "bogus.key=1"], "unknown config key 'bogus'"),
        (["expand", "jump", "--bogus"], "No such option: --bogus"),
        (["expand"], "nothing to expand"),
        (["expand", "--file", "/nonexistent/labels.txt"], "file not found"),
        (["expand", "jump", "--backend", "pack"], "the pack backend needs a file"),
        (["expand", "jump", "--backend", "openai"], "needs an API key"),
        (["expand", "jump", "--config", "/nonexistent.yaml"], "config file not found"),
    ],
)
def test_bad_input_one_line(args, text):
    assert_one_line_error(run(*args), text)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"jump\nw\xe4lk\n")
    assert_one_line_error(run("expand", "--file", str(path), "-b", "identity"), f"{path}:2: not UTF-8")


def test_file_expansion_writes_pack_and_summary(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("jump\n\nrun\njump\n  walk  \n")
    out = tmp_path / "pack.jsonl"
    proc = run("expand", "--file", str(labels), "--out", str(out), "-b", "identity")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["phrase"] for r in rows] == ["jump", "run", "walk"]
    manifest = json.loads((tmp_path / "pack.jsonl.manifest.json").read_text())
    assert manifest["count"] == 3 and manifest["format"] == "actiongpt-pack/1"
    assert "3 phrases: 0 from the store, 3 expanded, 0 failed" in proc.stderr


def test_config_show_masks_key():
    proc = run("config", "show", "--set", "openai.api_key=sk-abc123456", env={"OPENAI_API_KEY": "sk-env-999"})
    assert proc.returncode == 0
    assert "sk-abc123456" not in proc.stdout and "sk-env-999" not in proc.stdout
    assert "api_key: '***'" in proc.stdout and "temperature: 0.5" in proc.stdout


def test_pack_export_import_roundtrip(tmp_path):
    """Stored descriptions travel between stores; the import makes a later run free."""
    sys.path.insert(0, str(Path(__file__).parent))
    from actiongpt_plugin.expander import Expander
    from actiongpt_plugin.plugins import register_plugin, unregister_plugin
    from plugin_backends import ScriptedPlugin

    plugin = ScriptedPlugin()
    register_plugin(plugin, name="scripted-cli")
    try:
        home_a = tmp_path / "a"
        os.environ["ACTIONGPT_HOME"] = str(home_a)
        expected = Expander(backend="scripted").expand(["jump", "run"])
        proc = run("pack", "export", str(tmp_path / "p.jsonl"), env={"ACTIONGPT_HOME": str(home_a)})
        assert proc.returncode == 0, proc.stderr
        home_b = tmp_path / "b"
        proc = run("pack", "import", str(tmp_path / "p.jsonl"), env={"ACTIONGPT_HOME": str(home_b)})
        assert "imported 2 new of 2" in proc.stderr
        os.environ["ACTIONGPT_HOME"] = str(home_b)
        calls = len(plugin.backend.calls)
        result = Expander(backend="scripted").run(["jump", "run"])
        assert result.descriptions == expected and len(plugin.backend.calls) == calls
        # A tampered pack is refused.
        with open(tmp_path / "p.jsonl", "a") as f:
            f.write('{"phrase": "x", "descriptions": []}\n')
        assert_one_line_error(run("pack", "import", str(tmp_path / "p.jsonl")), "does not match its manifest")
    finally:
        unregister_plugin("scripted-cli")


def test_release_annotations_through_pack_backend(tmp_path):
    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps({"walk forward": ["a b c.", "d e f.", "g h i.", "j k l."]}))
    proc = run("expand", "walk forward", "--json", "-b", "pack", "--set", f"pack.path={release}")
    assert json.loads(proc.stdout) == {"walk forward": ["a b c.", "d e f.", "g h i.", "j k l."]}
    proc = run("expand", "fly", "-b", "pack", "--set", f"pack.path={release}")
    assert proc.returncode == 1 and "failed: 'fly': not in the pack" in proc.stderr


@pytest.fixture
def installed_example_plugin(tmp_path):
    """Make the example plugin visible to importlib.metadata exactly as `pip install` would."""
    site = tmp_path / "site"
    dist = site / "actiongpt_uppercase-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: actiongpt-uppercase\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[actiongpt]\nuppercase = actiongpt_uppercase\n")
    shutil.copy(EXAMPLE_PLUGIN / "actiongpt_uppercase.py", site)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_third_party_plugin_loads_from_entry_point(installed_example_plugin):
    env = installed_example_plugin
    proc = run("plugins", "--json", env=env)
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["uppercase"]["distribution"] == "actiongpt-uppercase"
    assert rows["templates"]["distribution"] == "actiongpt-plugin"  # built-ins come the same way
    assert set(rows["uppercase"]["hooks"]) >= {"register_backends", "register_templates", "clean_descriptions"}
    proc = run("expand", "jump", "-b", "echo", "-t", "terse", "-k", "2", "--json", env=env)
    assert json.loads(proc.stdout) == {"jump": ["THE PERSON PERFORMS JUMP WITH THE WHOLE BODY, TAKE 1.",
                                                "THE PERSON PERFORMS JUMP WITH THE WHOLE BODY, TAKE 2."]}
    # The kill switch leaves only the built-ins.
    off = {**env, "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS": "1"}
    names = {r["name"] for r in json.loads(run("plugins", "--json", env=off).stdout)}
    assert "uppercase" not in names and "templates" in names
    assert_one_line_error(run("expand", "jump", "-b", "echo", env=off), "unknown backend 'echo'")


def test_broken_third_party_plugin_is_one_line(tmp_path, installed_example_plugin):
    site = Path(installed_example_plugin["PYTHONPATH"].split(os.pathsep)[0])
    (site / "actiongpt_uppercase.py").write_text("raise ImportError('needs frobnicate')\n")
    proc = run("expand", "jump", "-b", "identity", env=installed_example_plugin)
    assert_one_line_error(proc, "plugin 'uppercase' from actiongpt-uppercase failed to load")
    assert "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS=1" in proc.stderr
