"""TEMOS adapter against the TEMOS stand-in (tiny random DistilBERT)."""
import pytest
import torch

from actiongpt_plugin import ActionGPT
from actiongpt_plugin.adapters.temos import TemosAdapter
from standins import ScriptedExpander
from standins.temos import DistilbertEncoderBase, make_temos

PHRASES = ["jump", "walk forward", "wave both hands"]


@pytest.fixture
def model(bert_dir):
    return make_temos(bert_dir).eval()


def original(encoder, texts):
    """The unpatched TEMOS method, called through the class (bypasses any instance attribute)."""
    return DistilbertEncoderBase.get_last_hidden_state(encoder, texts, return_mask=True)


class Counter:
    def __init__(self, module):
        self.batches = []
        module.register_forward_hook(lambda mod, args, kwargs, out: self.batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True)


def test_matches_model_and_text_encoder_only(model):
    assert TemosAdapter.matches(model) and TemosAdapter.matches(model.textencoder)
    assert not TemosAdapter.matches(torch.nn.Linear(2, 2))
    assert type(ActionGPT(model, expander=ScriptedExpander()).adapter) is TemosAdapter


@pytest.mark.parametrize("aggregator", ["paper", "masked-mean", "concat"])
def test_output_equals_hand_computation(model, aggregator):
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp, **{"embedding.aggregator": aggregator})
    enc = model.textencoder
    features, mask = ag.text_encoder(PHRASES, return_mask=True)
    base, base_mask = original(enc, PHRASES)
    assert features.dim() == 3 and features.shape[0] == len(PHRASES) and features.shape[2] == base.shape[2]
    assert mask.dtype == torch.bool and mask.shape == features.shape[:2]
    assert torch.equal(ag.text_encoder(PHRASES), features)  # return_mask=False: the tensor alone
    for i, phrase in enumerate(PHRASES):
        states, m = original(enc, exp.describe(phrase))  # the k descriptions of this phrase alone
        if aggregator == "paper":  # position-wise mean, pad states included, union mask
            expected, expected_mask = states.mean(0), m.any(0)
        elif aggregator == "masked-mean":
            w = m[..., None].float()
            expected, expected_mask = (states * w).sum(0) / w.sum(0).clamp_min(1), m.any(0)
        else:
            expected = torch.cat([states[j][m[j]] for j in range(len(states))])
            expected_mask = torch.ones(len(expected), dtype=torch.bool)
        n = expected.shape[0]
        assert torch.allclose(features[i, :n], expected, atol=1e-5)
        assert torch.equal(mask[i, :n], expected_mask) and not mask[i, n:].any()


def test_model_output_shapes_match_base(model):
    base = model.textencoder(PHRASES)
    with ActionGPT(model, expander=ScriptedExpander()):
        wrapped = model.textencoder(PHRASES)
        motion = model.text_to_motion_forward(PHRASES, [5, 7, 6])
    assert type(wrapped) is type(base) and wrapped.loc.shape == base.loc.shape == (3, 16)
    assert motion.shape == (3, 7, 6)


def test_state_dict_unchanged_and_checkpoints_load_both_ways(model, bert_dir):
    before = model.state_dict()
    n_params = len(list(model.parameters()))
    ag = ActionGPT(model, expander=ScriptedExpander()).install()
    during = model.state_dict()
    assert list(during) == list(before) and len(list(model.parameters())) == n_params
    assert all(torch.equal(before[k], during[k]) for k in before)
    upstream = make_temos(bert_dir, seed=1)
    model.load_state_dict(upstream.state_dict(), strict=True)  # upstream -> wrapped
    make_temos(bert_dir, seed=2).load_state_dict(model.state_dict(), strict=True)  # wrapped -> upstream
    ag.uninstall()
    assert list(model.state_dict()) == list(before)


def test_uninstall_restores_original_bit_for_bit(model):
    enc = model.textencoder
    base_states = enc.get_last_hidden_state(PHRASES)
    base = enc(PHRASES)
    ag = ActionGPT(model, expander=ScriptedExpander())
    with ag:
        assert "get_last_hidden_state" in vars(enc)
        assert not torch.equal(enc(PHRASES).loc, base.loc)
    assert "get_last_hidden_state" not in vars(enc) and not ag.installed
    assert torch.equal(enc.get_last_hidden_state(PHRASES), base_states)
    after = enc(PHRASES)
    assert torch.equal(after.loc, base.loc) and torch.equal(after.scale, base.scale)


def test_training_step_trains_projection_and_warm_cache_skips_text_model(model):
    exp = ScriptedExpander()
    calls = Counter(model.textencoder.text_model)
    ag = ActionGPT(model, expander=exp)
    ag.prepare(PHRASES)
    assert len(calls.batches) == 1 and calls.batches[0] == len(PHRASES) * 4  # one batched call
    model.train()
    batch = {"text": ["jump", "wave both hands"], "length": [5, 6], "features": torch.randn(2, 6, 6)}
    with ag:
        loss = model.training_loss(batch)
        loss.backward()
    assert len(calls.batches) == 1 and len(exp.calls) == 1  # warm: no text model, no expander
    enc = model.textencoder
    assert enc.projection[1].weight.grad is not None and enc.projection[1].weight.grad.abs().sum() > 0
    assert enc.mu_token.grad is not None
    assert all(p.grad is None for p in enc.text_model.parameters())
    assert not enc.text_model.training  # TEMOS keeps the frozen text model in eval mode


def test_install_then_load_state_dict_recomputes_for_new_weights(model, bert_dir):
    calls = Counter(model.textencoder.text_model)
    ag = ActionGPT(model, expander=ScriptedExpander()).install()
    first = ag.text_encoder(["jump"])
    assert torch.equal(ag.text_encoder(["jump"]), first) and len(calls.batches) == 1
    other = make_temos(bert_dir)
    with torch.no_grad():
        for p in other.textencoder.text_model.parameters():
            p.add_(0.5)
    model.load_state_dict(other.state_dict())  # in-place copy into the same tensors
    again = ag.text_encoder(["jump"])
    assert len(calls.batches) == 2 and not torch.allclose(again, first)
    ag.uninstall()


def test_a_second_actiongpt_on_a_patched_encoder_is_refused(model):
    ActionGPT(model, expander=ScriptedExpander()).install()
    with pytest.raises(Exception, match="already replaced"):
        ActionGPT(model, expander=ScriptedExpander())


def test_deepcopy_and_pickle_while_installed(model):
    import copy
    import pickle

    with ActionGPT(model, expander=ScriptedExpander()) as ag:
        out = model.textencoder.get_last_hidden_state(PHRASES)
        twin = copy.deepcopy(model)  # e.g. an EMA copy: same ActionGPT, its own encoder
        assert twin.textencoder.get_last_hidden_state.owner is twin.textencoder
        assert torch.allclose(twin.textencoder.get_last_hidden_state(PHRASES), out)
        carried = pickle.loads(pickle.dumps(model))  # a pickled model carries its ActionGPT (spawned workers)
    assert not ag.installed
    drop_in = carried.textencoder.get_last_hidden_state
    assert drop_in.adapter is not ag.adapter and drop_in.adapter.installed and drop_in.adapter.ag.descriptions == ag.descriptions
    assert torch.allclose(carried.textencoder.get_last_hidden_state(PHRASES), out, atol=1e-6)
    drop_in.adapter.ag.uninstall()
    assert torch.equal(carried.textencoder.get_last_hidden_state(PHRASES), original(carried.textencoder, PHRASES)[0])
    assert torch.equal(twin.textencoder.get_last_hidden_state(PHRASES), original(twin.textencoder, PHRASES)[0])
