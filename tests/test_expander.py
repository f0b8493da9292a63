"""Expansion through the store with a plugin-registered backend."""
import json

import pytest

from actiongpt_plugin import Expander, load_config
from actiongpt_plugin.errors import ActionGPTError, FatalBackendError, MissingDescriptionsError
from actiongpt_plugin.plugins import register_plugin, unregister_plugin
from actiongpt_plugin.store import DescriptionStore


def test_expand_then_rerun_hits_store(scripted, isolated_home):
    out = Expander(backend="scripted").expand(["jump", "run", "jump"])
    assert set(out) == {"jump", "run"} and all(len(v) == 4 for v in out.values())
    assert sorted(scripted.calls) == [("jump", 4), ("run", 4)]  # one request per phrase, n=k
    again = Expander(backend="scripted").run(["run", "jump"])
    assert again.descriptions == {"run": out["run"], "jump": out["jump"]}
    assert again.stats.cache_hits == 2 and again.stats.requests == 0
    assert len(scripted.calls) == 2
    assert (isolated_home / "store.sqlite").exists()


def test_whitespace_variants_share_one_expansion(scripted):
    out = Expander(backend="scripted").expand(["pick  up", " pick up "])
    assert out["pick  up"] == out[" pick up "]
    assert scripted.calls == [("pick up", 4)]


def test_short_answers_are_completed_not_padded(scripted):
    scripted.script["wave"] = [
        ["The person waves the right hand.", "", "ok", "wave"],  # 1 usable: empty, too short, label echo
        ["The person raises the arm high.", "The person swings the open hand."],
        ["The person lowers the arm slowly."],
    ]
    out = Expander(backend="scripted").expand(["wave"])["wave"]
    assert out == [
        "The person waves the right hand.",
        "The person raises the arm high.",
        "The person swings the open hand.",
        "The person lowers the arm slowly.",
    ]
    assert scripted.calls == [("wave", 4), ("wave", 3), ("wave", 1)]  # only the missing ones re-asked


def test_partial_results_survive_and_only_the_rest_is_asked(scripted):
    scripted.script["kick"] = [["The person lifts the right knee."]] + [["x"]] * 3  # never completes
    result = Expander(backend="scripted").run(["kick"])
    assert result.stats.failures == {"kick": "only 1 of 4 usable descriptions"}
    calls_before = len(scripted.calls)
    out = Expander(backend="scripted").expand(["kick"])["kick"]
    assert out[0] == "The person lifts the right knee."  # paid earlier, kept
    assert scripted.calls[calls_before] == ("kick", 3)


def test_strict_offline_lists_missing(scripted):
    Expander(backend="scripted").expand(["jump"])
    with pytest.raises(MissingDescriptionsError) as info:
        Expander(backend="scripted", **{"store.offline": True}).expand(["jump", "swim", "fly"])
    assert info.value.phrases == ["swim", "fly"]
    assert "'swim', 'fly'" in str(info.value)
    assert len(scripted.calls) == 1


def test_fatal_backend_error_stops_the_run(scripted):
    scripted.fatal = True
    with pytest.raises(FatalBackendError, match="invalid API key"):
        Expander(backend="scripted").run([f"p{i}" for i in range(40)])
    assert len(scripted.calls) <= 8 + 1  # at most one wave of in-flight requests


def test_concurrency_limit(scripted):
    Expander(backend="scripted", **{"expand.concurrency": 3}).expand([f"move {i}" for i in range(20)])
    assert scripted.max_in_flight == 3


def test_cache_key_covers_settings(scripted):
    Expander(backend="scripted").expand(["jump"])
    Expander(backend="scripted", **{"sampling.temperature": 0.9}).expand(["jump"])
    Expander(backend="scripted", template="actiongpt-in-detail").expand(["jump"])
    Expander(backend="scripted", k=2).expand(["jump"])
    assert len(scripted.calls) == 4


def test_store_records_provenance_and_usage(scripted, isolated_home):
    Expander(backend="scripted").expand(["jump"])
    with DescriptionStore(isolated_home / "store.sqlite") as store:
        (row,) = list(store.rows())
        assert store.integrity_check() == "ok"
    assert row["backend"] == "scripted" and row["model"] == "scripted-v1"
    assert row["template"] == "actiongpt" and row["k"] == 4
    assert row["prompt"] == "Describe a person's body movements who is performing the action jump in details"
    assert row["prompt_tokens"] == 10 and row["requests"] == 1
    assert row["params"]["temperature"] == 0.5


def test_bad_phrases():
    ex = Expander(backend="identity")
    for bad, match in (("", "empty phrase"), ("   \t", "empty phrase"), ("x" * 10_000, "too long")):
        with pytest.raises(ActionGPTError, match=match) as info:
            ex.expand([bad])
        assert "\n" not in str(info.value)


def test_identity_and_pack(tmp_path):
    assert Expander(backend="identity", k=2).expand(["sit down"]) == {"sit down": ["sit down", "sit down"]}
    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps({"walk": ["w1 a b", "w2 a b", "w3 a b", "w4 a b"]}))
    ex = Expander(backend="pack", **{"pack.path": str(release)})
    assert ex.expand(["walk"]) == {"walk": ["w1 a b", "w2 a b", "w3 a b", "w4 a b"]}
    result = ex.run(["walk", "fly"])
    assert "fly" in result.stats.failures and "walk" in result.descriptions


def test_auto_backend_choice(monkeypatch):
    from actiongpt_plugin.expander import resolve_backend_name

    assert resolve_backend_name(load_config()) == "embedded"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert resolve_backend_name(load_config()) == "openai"
    assert resolve_backend_name(load_config(backend="identity")) == "identity"


def test_oversample_then_select_hook_keeps_k(scripted):
    from actiongpt_plugin import hookimpl

    class Longest:
        @hookimpl
        def select_descriptions(self, phrase, candidates, k, config):
            return sorted(candidates, key=len, reverse=True)[:k]

    scripted.script["jump"] = [[f"The person jumps{' high' * i}." for i in range(8)]]
    register_plugin(Longest(), name="longest")
    try:
        out = Expander(backend="scripted", **{"expand.oversample": 2.0}).expand(["jump"])["jump"]
    finally:
        unregister_plugin("longest")
    assert scripted.calls == [("jump", 8)]
    assert out == [f"The person jumps{' high' * i}." for i in (7, 6, 5, 4)]
    # Without the selector the built-in keeps the first k of the same stored candidates: no new call.
    assert Expander(backend="scripted", **{"expand.oversample": 2.0}).expand(["jump"])["jump"][0] == "The person jumps."
    assert len(scripted.calls) == 1
