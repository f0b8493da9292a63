"""MDM adapter against the MDM stand-in (tiny CLIP with CLIP's real BPE ids; tiny DistilBERT)."""
import copy
import pickle

import pytest
import torch

pytest.importorskip("transformers")
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.mdm import MdmAdapter  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from standins import ScriptedExpander, tiny_distilbert  # noqa: E402
from standins.mdm import (  # noqa: E402
    MDM, ClassifierFreeSampleModel, load_model_wo_clip, make_mdm, p_sample_loop, state_dict_wo_clip,
)

LABELS = ["jump", "walk forward", "wave both hands"]
TRUNCATE = {"embedding.long_text": "truncate"}  # exactly MDM's own text path for each description


@pytest.fixture(scope="module")
def bert_path(tmp_path_factory):
    return tiny_distilbert(tmp_path_factory.mktemp("mdm") / "distilbert")


@pytest.fixture
def model():
    return make_mdm()


def batch(texts, frames=6):
    y = {"text": list(texts), "scale": torch.full((len(texts),), 2.5)}
    return torch.randn(len(texts), 4, 1, frames), torch.zeros(len(texts), dtype=torch.long), y


def test_matches_text_mdm_and_its_guidance_wrapper(model, bert_path):
    assert MdmAdapter.matches(model) and MdmAdapter.matches(ClassifierFreeSampleModel(model))
    assert MdmAdapter.matches(make_mdm("bert", bert_model_path=bert_path))
    action_only = MDM("", 4, 1, 3, True, "rot6d", True, [3.14, 0, 0], latent_dim=8, ff_size=8, num_layers=1,
                      num_heads=1, cond_mode="action")
    assert not MdmAdapter.matches(action_only) and not MdmAdapter.matches(model.clip_model)
    assert type(ActionGPT(model, expander=ScriptedExpander()).adapter) is MdmAdapter


@pytest.mark.parametrize("aggregator", ["paper", "norm-mean"])
def test_clip_encode_text_equals_hand_computation(model, aggregator):
    exp = ScriptedExpander()
    base = model.encode_text(LABELS)
    with ActionGPT(model, expander=exp, **{"embedding.aggregator": aggregator, **TRUNCATE}) as ag:
        out = model.encode_text(LABELS)
        assert torch.equal(ag.text_encoder(LABELS), out)
    assert out.shape == base.shape == (1, 3, 64) and out.dtype == base.dtype == torch.float32
    assert exp.calls == [LABELS]
    for i, label in enumerate(LABELS):
        parts = model.clip_encode_text(exp.describe(label))[0]  # MDM's own path: 20-token cut on HumanML3D
        mean = parts.mean(0)
        if aggregator == "norm-mean":
            mean = mean * parts.norm(dim=1).mean() / mean.norm()
        assert torch.allclose(out[0, i], mean, atol=1e-4)


def test_bert_mode_token_features_and_padding_mask(bert_path):
    model = make_mdm("bert", bert_model_path=bert_path)
    exp = ScriptedExpander()
    base_f, base_pad = model.encode_text(LABELS)
    with ActionGPT(model, expander=exp) as ag:
        assert ag.adapter.granularity == "tokens"
        features, padding = model.encode_text(LABELS)
        x, t, y = batch(LABELS)
        model(x, t, y).sum().backward()  # memory_key_padding_mask takes the returned mask
    assert features.shape[1:] == base_f.shape[1:] == (3, 32) and padding.dtype == torch.bool
    assert padding.shape == (3, features.shape[0])
    for i, label in enumerate(LABELS):
        states, pad = model.bert_encode_text(exp.describe(label))  # [T, 4, H], [4, T] True = padding
        real = ~pad
        n = int(real.any(0).nonzero().max()) + 1
        assert torch.allclose(features[:n, i], states.mean(1)[:n], atol=1e-5)
        assert torch.equal(~padding[i, :n], real.any(0)[:n]) and padding[i, n:].all()
    assert model.embed_text.weight.grad is not None
    assert all(p.grad is None for p in model.clip_model.parameters())
    f, pad = model.encode_text(LABELS)
    assert torch.equal(f, base_f) and torch.equal(pad, base_pad)


def test_state_dict_unchanged_and_checkpoints_load_both_ways(model):
    before = model.state_dict()
    params = list(model.parameters())
    ag = ActionGPT(model, expander=ScriptedExpander()).install()
    during = model.state_dict()
    assert list(during) == list(before) and all(torch.equal(during[k], before[k]) for k in before)
    assert len(list(model.parameters())) == len(params) and all(a is b for a, b in zip(model.parameters(), params))
    load_model_wo_clip(make_mdm(seed=3), state_dict_wo_clip(model))  # wrapped -> upstream
    load_model_wo_clip(model, state_dict_wo_clip(make_mdm(seed=4)))  # upstream -> wrapped
    model.load_state_dict(before)
    ag.uninstall()
    assert list(model.state_dict()) == list(before)


def test_uninstall_restores_bit_for_bit(model):
    original = vars(model)["encode_text"]
    base = model.encode_text(LABELS)
    with ActionGPT(model, expander=ScriptedExpander()):
        assert not torch.equal(model.encode_text(LABELS), base)
        assert model.to("cpu") is None  # MDM's _apply returns None; the drop-in stays in place
        assert model.train() is None
    assert vars(model)["encode_text"] is original
    assert torch.equal(model.encode_text(LABELS), base)


def test_guidance_wrapper_created_after_install_sees_actiongpt(model):
    exp = ScriptedExpander()
    with ActionGPT(model, expander=exp, **TRUNCATE) as ag:
        ag.prepare(LABELS)
        wrapper = ClassifierFreeSampleModel(model)  # generate.py wraps after loading the checkpoint
        assert torch.equal(wrapper.encode_text(LABELS), ag.text_encoder(LABELS))
        x, t, y = batch(LABELS)
        sample = p_sample_loop(wrapper, x.shape, y)
        assert sample.shape == x.shape and torch.equal(y["text_embed"], ag.text_encoder(LABELS))
    # A wrapper outlives the install: it falls back to MDM's own encoder.
    assert torch.equal(wrapper.encode_text(LABELS), model.clip_encode_text(LABELS))


def test_guidance_wrapper_given_to_actiongpt_is_patched_too(model):
    wrapper = ClassifierFreeSampleModel(model)  # created before install
    original = vars(wrapper)["encode_text"]
    with ActionGPT(wrapper, expander=ScriptedExpander()) as ag:
        assert ag.adapter.mdm is model
        out = wrapper.encode_text(LABELS)
        assert torch.equal(out, model.encode_text(LABELS)) and torch.equal(out, ag.text_encoder(LABELS))
    assert vars(wrapper)["encode_text"] is original
    assert torch.equal(wrapper.encode_text(LABELS), model.clip_encode_text(LABELS))


def test_training_step_and_warm_cache(model):
    calls = []
    model.clip_model.transformer.register_forward_hook(lambda *a: calls.append(1))
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp)
    ag.prepare(LABELS)
    assert len(calls) == 1
    with ag:
        model.train()
        x, t, y = batch(LABELS)
        torch.nn.functional.mse_loss(model(x, t, y), x).backward()
        x2, _, y2 = batch(LABELS[:2])
        p_sample_loop(model, x2.shape, y2)
    assert len(calls) == 1 and len(exp.calls) == 1 and ag.cache.hits >= 2
    assert model.embed_text.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip_model.parameters())


def test_deepcopy_keeps_actiongpt_and_pickle_carries_it(model):
    with ActionGPT(model, expander=ScriptedExpander()) as ag:
        out = model.encode_text(LABELS)
        ema = copy.deepcopy(model)  # MDM's training loop keeps an EMA copy this way
        assert ema.encode_text.owner is ema and ema.clip_model is not model.clip_model
        assert torch.allclose(ema.encode_text(LABELS), out)
        carried = pickle.loads(pickle.dumps(model))  # spawned workers: the drop-in and its ActionGPT travel
    assert ag.installed is False
    assert carried.encode_text.adapter is not ag.adapter and carried.encode_text.adapter.installed
    assert torch.allclose(carried.encode_text(LABELS), out, atol=1e-6)
    carried.encode_text.adapter.ag.uninstall()
    assert carried.encode_text.__func__ is MDM.clip_encode_text
    assert torch.equal(carried.encode_text(LABELS), model.clip_encode_text(LABELS))
    assert torch.equal(ema.encode_text(LABELS), ema.clip_encode_text(LABELS))  # uninstalled: upstream again


def test_errors(model):
    with pytest.raises(ActionGPTError, match="pooled"):
        ActionGPT(model, expander=ScriptedExpander(), **{"embedding.aggregator": "concat"})
    with ActionGPT(model, expander=ScriptedExpander()):
        with pytest.raises(ActionGPTError, match="already replaced"):
            ActionGPT(model, expander=ScriptedExpander())


def test_example_runs(run_example):
    out = run_example("mdm")
    assert "step 1: loss" in out and "text model calls: 1;" in out
    assert "MDM sees: 'a person bends both knees and jumps up.'" in out
