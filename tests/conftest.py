import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own store and cache dir, and no credentials from the developer's shell."""
    home = tmp_path / "actiongpt-home"
    monkeypatch.setenv("ACTIONGPT_HOME", str(home))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACTIONGPT_CONFIG", "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def shared_model_home(tmp_path_factory):
    """A cache dir shared by the tests of one run, for expensive artefacts (dequantised models)."""
    return tmp_path_factory.mktemp("model-home")


@pytest.fixture
def scripted():
    """The counting `scripted` backend, registered the way a third-party plugin would be."""
    from actiongpt_plugin.plugins import register_plugin, unregister_plugin
    from plugin_backends import ScriptedPlugin

    plugin = ScriptedPlugin()
    register_plugin(plugin, name="scripted-test")
    yield plugin.backend
    unregister_plugin("scripted-test")


@pytest.fixture
def run_example(monkeypatch, capsys):
    """Run examples/<name>_example.py as a user would (`--steps 2`); return what it printed."""
    import runpy
    from pathlib import Path

    def run(name: str) -> str:
        examples = Path(__file__).resolve().parents[1] / "examples"
        monkeypatch.syspath_prepend(str(examples))
        monkeypatch.setattr("sys.argv", [f"{name}_example.py", "--steps", "2"])
        runpy.run_path(str(examples / f"{name}_example.py"), run_name="__main__")
        return capsys.readouterr().out

    return run


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A tiny random DistilBERT (TEMOS's text model) saved once per test run."""
    from standins import tiny_distilbert

    return tiny_distilbert(tmp_path_factory.mktemp("distilbert") / "distilbert-base-uncased")
