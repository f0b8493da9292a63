"""ActionGPT itself: adapter choice, expansion policy, embedding cache (TEMOS stand-in as the model)."""
import json

import pytest
import torch

from actiongpt_plugin import ActionGPT, Expander, hookimpl, load_config
from actiongpt_plugin.errors import ActionGPTError, MissingDescriptionsError
from actiongpt_plugin.plugins import register_plugin, unregister_plugin
from standins import ScriptedExpander
from standins.temos import DistilbertEncoderBase, make_temos


@pytest.fixture
def model(bert_dir):
    return make_temos(bert_dir).eval()


def text_model_calls(model):
    calls = []
    model.textencoder.text_model.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_no_adapter_for_unknown_model_lists_registered():
    with pytest.raises(ActionGPTError, match="no adapter matches a Linear model; registered adapters: .*temos"):
        ActionGPT(torch.nn.Linear(2, 2), expander=ScriptedExpander())


def test_adapter_by_name_and_unknown_name(model):
    assert ActionGPT(model, expander=ScriptedExpander(), adapter="temos").adapter.name == "temos"
    with pytest.raises(ActionGPTError, match="unknown adapter 'nope'"):
        ActionGPT(model, expander=ScriptedExpander(), adapter="nope")


def test_config_keys_cfg_and_bad_values(model):
    ag = ActionGPT(model, expander=ScriptedExpander(), k=2, **{"embedding.aggregator": "masked-mean"})
    assert ag.cfg.k == 2 and ag.aggregator_name == "masked-mean"
    assert ActionGPT(model, expander=ScriptedExpander(), cfg=load_config(k=3)).cfg.k == 3
    with pytest.raises(ActionGPTError, match="not both"):
        ActionGPT(model, cfg=load_config(), k=3)
    with pytest.raises(ActionGPTError, match="unknown aggregator 'avg'"):
        ActionGPT(model, **{"embedding.aggregator": "avg"})
    with pytest.raises(ActionGPTError, match="embedding.on_missing"):
        ActionGPT(model, **{"embedding.on_missing": "label"})


def test_expand_dedupes_and_asks_only_for_new_labels(model):
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp)
    out = ag.expand(["jump", "run", "jump"])
    assert list(out) == ["jump", "run"] and out["jump"] == exp.describe("jump")
    ag.expand(["run", "sit"])
    assert exp.calls == [["jump", "run"], ["sit"]]


def test_phrase_never_expanded_is_expanded_on_first_use(model):
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp)
    ag.text_encoder(["jump", "kick", "jump"])
    assert exp.calls == [["jump", "kick"]]  # one call for the batch's new phrases
    assert set(ag.descriptions) == {"jump", "kick"}


def test_strict_fails_listing_unprepared_phrases(model):
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp, **{"embedding.on_missing": "strict"})
    ag.prepare(["jump"])
    ag.text_encoder(["jump"])
    with pytest.raises(MissingDescriptionsError, match="'kick'") as info:
        ag.text_encoder(["jump", "kick", "spin"])
    assert info.value.phrases == ["kick", "spin"] and exp.calls == [["jump"]]


def test_no_silent_fallback_to_the_label(model):
    exp = ScriptedExpander(table={"fly": []})
    ag = ActionGPT(model, expander=exp)
    with pytest.raises(MissingDescriptionsError, match="'fly'"):
        ag.text_encoder(["jump", "fly"])
    assert "fly" not in ag.descriptions


def test_strict_uses_the_store_offline(model, scripted, tmp_path):
    store = {"backend": "scripted", "store.path": str(tmp_path / "store.sqlite")}
    Expander(**store).expand(["jump"])  # an earlier `actiongpt expand` run
    n = len(scripted.calls)
    ag = ActionGPT(model, **store, **{"embedding.on_missing": "strict"})
    features = ag.text_encoder(["jump"])
    assert features.shape[0] == 1 and len(scripted.calls) == n  # served from the store
    with pytest.raises(MissingDescriptionsError, match="'fly'"):
        ag.text_encoder(["fly"])
    assert len(scripted.calls) == n
    ag.close()


def test_release_annotations_end_to_end(model, tmp_path):
    pack = tmp_path / "gpt3_annotations.json"
    table = {"jump": [f"a person jumps up {i}" for i in range(4)], "walk": [f"a person walks {i}" for i in range(4)]}
    pack.write_text(json.dumps(table))
    ag = ActionGPT(model, backend="pack", **{"pack.path": str(pack), "store.path": str(tmp_path / "s.sqlite")})
    assert ag.expand(["walk", "jump"]) == {"walk": table["walk"], "jump": table["jump"]}
    states, mask = DistilbertEncoderBase.get_last_hidden_state(model.textencoder, table["jump"], return_mask=True)
    features, out_mask = ag.text_encoder(["jump"], return_mask=True)
    assert torch.allclose(features[0], states.mean(0), atol=1e-5) and torch.equal(out_mask[0], mask.any(0))
    ag.close()


def test_cache_hit_skips_text_model_and_miss_is_one_batched_call(model):
    calls = text_model_calls(model)
    ag = ActionGPT(model, expander=ScriptedExpander())
    first, first_mask = ag.text_encoder(["jump", "run", "sit"], return_mask=True)
    assert len(calls) == 1 and ag.text_model_calls == 1
    again, again_mask = ag.text_encoder(["sit", "jump"], return_mask=True)
    assert len(calls) == 1 and ag.cache.hits == 2
    n = int(first_mask[2].sum())  # sit's own length
    assert torch.equal(again[0, :n], first[2, :n]) and torch.equal(again_mask[0, :n], first_mask[2, :n])
    ag.text_encoder(["jump", "kick"])  # only kick is new
    assert len(calls) == 2


def test_cached_result_is_batch_independent(model):
    ag = ActionGPT(model, expander=ScriptedExpander())
    alone, alone_mask = ag.text_encoder(["jump"], return_mask=True)
    fresh = ActionGPT(model, expander=ScriptedExpander())
    together, together_mask = fresh.text_encoder(["wave both hands", "jump"], return_mask=True)
    n = alone.shape[1]
    assert torch.equal(together_mask[1, :n], alone_mask[0]) and not together_mask[1, n:].any()
    assert torch.allclose(together[1, :n], alone[0], atol=1e-5)


def test_cache_disabled_runs_text_model_every_time(model):
    calls = text_model_calls(model)
    ag = ActionGPT(model, expander=ScriptedExpander(), **{"embedding.cache": False})
    ag.text_encoder(["jump"])
    ag.text_encoder(["jump"])
    assert ag.cache is None and len(calls) == 2


def test_cache_is_bounded_lru(model):
    ag = ActionGPT(model, expander=ScriptedExpander(), **{"embedding.cache_size": 2})
    ag.text_encoder(["a", "b"])
    ag.text_encoder(["a"])
    ag.text_encoder(["c"])  # evicts b, the least recently used
    calls = text_model_calls(model)
    ag.text_encoder(["a", "c"])
    assert len(calls) == 0 and len(ag.cache) == 2
    ag.text_encoder(["b"])
    assert len(calls) == 1


def test_trainable_text_model_is_not_cached_and_gets_gradients(bert_dir):
    model = make_temos(bert_dir)
    model.textencoder.text_model.requires_grad_(True)
    calls = text_model_calls(model)
    with ActionGPT(model, expander=ScriptedExpander()):
        model.textencoder(["jump"]).loc.sum().backward()
        model.textencoder(["jump"])
    assert len(calls) == 2
    assert any(p.grad is not None for p in model.textencoder.text_model.parameters())


def test_prepare_in_inference_mode_then_train(model):
    ag = ActionGPT(model, expander=ScriptedExpander())
    with torch.inference_mode():
        ag.prepare(["jump", "run"])
    model.train()
    with ag:
        model.textencoder(["jump", "run"]).rsample().sum().backward()
    assert model.textencoder.projection[1].weight.grad is not None


def test_fewer_than_k_descriptions_are_averaged_over_what_there_is(model):
    two = ["a person jumps", "a person hops up and down"]
    ag = ActionGPT(model, expander=ScriptedExpander(table={"hop": two}))
    features = ag.text_encoder(["hop", "jump"])
    states, mask = DistilbertEncoderBase.get_last_hidden_state(model.textencoder, two, return_mask=True)
    assert torch.allclose(features[0, : states.shape[1]], states.mean(0), atol=1e-5)


def test_context_manager_and_double_install(model):
    ag = ActionGPT(model, expander=ScriptedExpander())
    with ag.install():
        assert ag.installed
        with pytest.raises(ActionGPTError, match="already installed"):
            ag.install()
    assert not ag.installed
    ag.uninstall()  # harmless when not installed


def test_cache_device_and_bad_value(model):
    ag = ActionGPT(model, expander=ScriptedExpander(), **{"embedding.cache_device": "cpu"})
    ag.text_encoder(["jump"])
    assert all(t.device.type == "cpu" for value in ag.cache._data.values() for t in value if t is not None)
    with pytest.raises(ActionGPTError, match="embedding.cache_device"):
        ActionGPT(model, expander=ScriptedExpander(), **{"embedding.cache_device": "nowhere"})


class FirstOnly:
    """A third-party aggregator registered as a plain function, as a plugin would."""

    @hookimpl
    def register_aggregators(self, register):
        register("first-test", lambda features, mask, k: (features[::k], None if mask is None else mask[::k]))


def test_third_party_aggregator_plugin(model):
    register_plugin(FirstOnly(), name="first-test-plugin")
    try:
        exp = ScriptedExpander()
        ag = ActionGPT(model, expander=exp, **{"embedding.aggregator": "first-test"})
        features = ag.text_encoder(["jump"])
    finally:
        unregister_plugin("first-test-plugin")
    first = exp.describe("jump")[0]
    states = DistilbertEncoderBase.get_last_hidden_state(model.textencoder, [first])
    assert torch.allclose(features, states, atol=1e-5)


@pytest.mark.parametrize("name", ["temos", "teach", "motionclip"])
def test_examples_run(name, run_example):
    if name == "motionclip":
        from standins import require_clip_vocabulary

        require_clip_vocabulary()
    out = run_example(name)
    assert "step 1: loss" in out and "text model calls: 1;" in out


def test_torch_compile_of_an_installed_model_works_again_and_again(model):
    import torch._dynamo

    traced = []

    def recording(gm, example_inputs):  # the eager backend, noting where each traced op came from
        traced.extend(node.meta.get("stack_trace") or "" for node in gm.graph.nodes)
        return gm.forward

    batches = [["jump", "walk forward"], ["jump", "walk forward"], ["sit", "run"]]
    with ActionGPT(model, expander=ScriptedExpander()) as ag:
        model.train()
        eager = []
        for texts in batches:
            eager.append(model.text_to_motion_forward(texts, [5, 6], return_latent=True)[2].loc)
        for backend in (recording, recording, "aot_eager"):  # several fresh compiles, several calls each
            torch._dynamo.reset()
            step = torch.compile(model.text_to_motion_forward, backend=backend)
            for texts, want in zip(batches, eager):
                model.zero_grad()
                features, latent, distribution = step(texts, [5, 6], return_latent=True)
                assert torch.allclose(distribution.loc, want, atol=1e-5)
                features.sum().backward()
                assert model.textencoder.projection[1].weight.grad.abs().sum() > 0
    assert any("distilbert" in t.lower() or "temos.py" in t for t in traced)  # the model itself was compiled...
    assert not [t for t in traced if "actiongpt_plugin" in t]  # ...the drop-in (cache lookup) ran outside the graph
    assert ag.text_model_calls == 2  # the cache served every compiled call


def test_strict_with_the_pack_backend_serves_pack_labels(model, tmp_path):
    """Strict mode reads the pack (unpaid, offline by nature); only labels missing from it fail.
    Needs the coordinator's expander change (offline mode blocks only paid backends)."""
    pack = tmp_path / "gpt3_annotations.json"
    table = {"jump": [f"a person jumps up {i}" for i in range(4)]}
    pack.write_text(json.dumps(table))
    ag = ActionGPT(model, backend="pack", **{"pack.path": str(pack), "store.path": str(tmp_path / "s.sqlite"),
                                              "embedding.on_missing": "strict"})
    features = ag.text_encoder(["jump"])  # never prepared, but in the pack
    assert features.shape[0] == 1 and ag.descriptions == {"jump": table["jump"]}
    with pytest.raises(MissingDescriptionsError, match="'fly'"):
        ag.text_encoder(["fly"])
    ag.close()
