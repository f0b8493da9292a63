import pytest
from omegaconf import OmegaConf

from actiongpt_plugin.cleaning import clean_all, clean_text
from actiongpt_plugin.config import load_config, masked
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.plugins import get_registry


def test_precedence_defaults_file_overrides(tmp_path, monkeypatch):
    assert load_config().k == 4 and load_config().sampling.temperature == 0.5
    path = tmp_path / "c.yaml"
    path.write_text("k: 6\nsampling:\n  temperature: 0.7\n")
    cfg = load_config(path, ["k=8"])
    assert (cfg.k, cfg.sampling.temperature) == (8, 0.7)
    monkeypatch.setenv("ACTIONGPT_CONFIG", str(path))
    assert load_config().k == 6
    assert load_config(overrides=["sampling.max_tokens=64"]).sampling.max_tokens == 64


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "unknown config key 'bogus'; valid keys here: k, backend"),
        ("sampling.tmp=1", "unknown config key 'sampling.tmp'; valid keys here: temperature"),
        ("k=many", "bad value for config key 'k'"),
        ("openai.api=rest", "valid choices: chat, completions"),
        ("embedding.on_missing=guess", "valid choices: expand, strict"),
        ("k=0", "must be at least 1"),
        ("nokey", "must look like key=value"),
    ],
)
def test_bad_config_is_one_line(override, message):
    with pytest.raises(ActionGPTError) as info:
        load_config(overrides=[override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("k: [1,\n")
    with pytest.raises(ActionGPTError, match="cannot read config file"):
        load_config(bad)
    with pytest.raises(ActionGPTError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_secrets_masked():
    cfg = load_config(overrides=["openai.api_key=sk-very-secret"])
    assert cfg.openai.api_key == "sk-very-secret"
    dumped = OmegaConf.to_yaml(masked(cfg))
    assert "sk-very-secret" not in dumped and "***" in dumped


def test_release_prompt_verbatim_and_versions():
    reg = get_registry()
    prompt = reg.template("actiongpt").render("jump")
    assert prompt.text == "Describe a person's body movements who is performing the action jump in details"
    assert prompt.as_messages() == [{"role": "user", "content": prompt.text}]
    assert reg.template("actiongpt@1") is reg.template("actiongpt")
    assert reg.template("actiongpt-in-detail").render("jump").text.endswith("jump in detail")
    few = reg.template("few-shot").render("jump")
    roles = [m["role"] for m in few.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert few.messages[-1]["content"].endswith("jump") and "jump" in few.text
    with pytest.raises(ActionGPTError, match="unknown version '9' of template 'actiongpt'"):
        reg.template("actiongpt@9")
    assert {"actiongpt", "actiongpt-in-detail", "body-parts", "caption", "few-shot"} <= set(reg.templates)


def test_cleaning():
    assert clean_text("The person\nbends the knees\n and jumps.") == "The person bends the knees and jumps."
    assert clean_text("1. The person jumps up high.") == "The person jumps up high."
    # Cut off by max_tokens: keep the complete sentences.
    assert clean_text("The person crouches down. Then the person pushes off with") == "The person crouches down."
    assert clean_text("Sure! The person raises both arms.") == "The person raises both arms."
    assert clean_text("   ") is None and clean_text("jumps.") is None
    assert clean_text("A person jumps. Then lands softly on both feet.", max_words=4) == "A person jumps."
    assert clean_all("jump", ["jump", "Jump.", "The person leaps into the air."]) == ["The person leaps into the air."]


def test_configuration_doc_matches_the_schema():
    """docs/configuration.md shows every key with its real default: the doc cannot drift."""
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    documented = yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])
    assert documented == OmegaConf.to_container(load_config())
