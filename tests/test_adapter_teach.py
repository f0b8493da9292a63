"""TEACH adapter against the TEACH stand-in: class-level patch that survives load_from_checkpoint."""
import pytest
import torch

from actiongpt_plugin import ActionGPT
from actiongpt_plugin.adapters.teach import TeachAdapter
from actiongpt_plugin.adapters.temos import TemosAdapter
from actiongpt_plugin.errors import ActionGPTError
from standins import ScriptedExpander, tiny_distilbert
from standins import teach as upstream
from standins.teach import DistilbertEncoderBase, make_teach

PHRASES = ["jump", "walk forward", "wave both hands"]
ORIGINAL = DistilbertEncoderBase.__dict__["get_last_hidden_state"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A TEACH checkout root: the text model lives under <root>/deps/distilbert-base-uncased."""
    root = tmp_path_factory.mktemp("teach-root")
    tiny_distilbert(root / "deps" / "distilbert-base-uncased")
    return root


@pytest.fixture
def modelpath(root, monkeypatch):
    monkeypatch.setattr(upstream, "ORIGINAL_CWD", str(root))
    return "/cluster/elsewhere/deps/distilbert-base-uncased"  # only the part from 'deps' on counts


@pytest.fixture
def model(modelpath):
    yield make_teach(modelpath).eval()
    assert DistilbertEncoderBase.__dict__["get_last_hidden_state"] is ORIGINAL, "a test left the class patched"


def original(encoder, texts):
    return ORIGINAL(encoder, texts, return_mask=True)


def test_deps_path_rule(root, monkeypatch):
    monkeypatch.setattr(upstream, "ORIGINAL_CWD", None)
    with pytest.raises(ValueError, match="HydraConfig"):
        make_teach("/x/deps/distilbert-base-uncased")
    monkeypatch.setattr(upstream, "ORIGINAL_CWD", str(root))
    with pytest.raises(ValueError):
        make_teach(str(root / "distilbert-base-uncased"))  # no deps component
    assert upstream.resolve_deps_path("/a/b/deps/m") == f"{root}/deps/m"
    assert make_teach("relative/deps/distilbert-base-uncased").textencoder.text_encoded_dim == 32


def test_matches_teach_not_temos(model):
    assert TeachAdapter.matches(model) and not TemosAdapter.matches(model)
    assert type(ActionGPT(model, expander=ScriptedExpander()).adapter) is TeachAdapter


def test_output_equals_hand_computation_and_shapes(model):
    exp = ScriptedExpander()
    enc = model.textencoder
    base_states, base_mask = original(enc, PHRASES)
    base = enc(PHRASES, hframes=torch.randn(3, 1, 6))
    with ActionGPT(model, expander=exp) as ag:
        features, mask = enc.get_last_hidden_state(PHRASES, return_mask=True)
        assert torch.equal(ag.text_encoder(PHRASES, return_mask=True)[0], features)
        wrapped = enc(PHRASES, hframes=torch.randn(3, 1, 6))
    assert features.shape[0] == 3 and features.shape[2] == base_states.shape[2] and mask.dtype == torch.bool
    assert wrapped.loc.shape == base.loc.shape == (3, 16)
    for i, phrase in enumerate(PHRASES):
        states, m = original(enc, exp.describe(phrase))
        n = states.shape[1]
        assert torch.allclose(features[i, :n], states.mean(0), atol=1e-5)
        assert torch.equal(mask[i, :n], m.any(0)) and not mask[i, n:].any()


def test_patch_survives_load_from_checkpoint(model, modelpath, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    model.dump_checkpoint(ckpt)
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp)
    with ag:
        loaded = model.load_from_checkpoint(ckpt)  # a NEW instance, as TEACH's scripts do
        assert loaded is not model and "get_last_hidden_state" not in vars(loaded.textencoder)
        features = loaded.textencoder.get_last_hidden_state(["jump"])
        states, _ = original(loaded.textencoder, exp.describe("jump"))
        assert torch.allclose(features[0], states.mean(0), atol=1e-5)
        motion = loaded.forward_seq(["walk forward", "jump"], [5, 4])
        assert motion.shape == (9, 6)
    assert exp.calls == [["jump"], ["walk forward"]]
    assert DistilbertEncoderBase.__dict__["get_last_hidden_state"] is ORIGINAL
    assert torch.equal(loaded.textencoder.get_last_hidden_state(["jump"]), original(loaded.textencoder, ["jump"])[0])


def test_state_dict_unchanged_and_checkpoints_load_both_ways(model, modelpath, tmp_path):
    keys = list(model.state_dict())
    with ActionGPT(model, expander=ScriptedExpander()):
        assert list(model.state_dict()) == keys
        model.dump_checkpoint(tmp_path / "wrapped.ckpt")
        make_teach(modelpath, seed=3).dump_checkpoint(tmp_path / "upstream.ckpt")
        model.load_from_checkpoint(tmp_path / "upstream.ckpt")  # upstream -> wrapped (strict)
    reloaded = model.load_from_checkpoint(tmp_path / "wrapped.ckpt")  # wrapped -> upstream (strict)
    assert list(reloaded.state_dict()) == keys
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_uninstall_restores_bit_for_bit(model):
    enc = model.textencoder
    base = enc(PHRASES)
    with ActionGPT(model, expander=ScriptedExpander()):
        assert DistilbertEncoderBase.__dict__["get_last_hidden_state"] is not ORIGINAL
        assert not torch.equal(enc(PHRASES).loc, base.loc)
    after = enc(PHRASES)
    assert DistilbertEncoderBase.__dict__["get_last_hidden_state"] is ORIGINAL
    assert torch.equal(after.loc, base.loc) and torch.equal(after.scale, base.scale)


def test_training_with_warm_cache(model):
    exp = ScriptedExpander()
    calls = []
    model.textencoder.text_model.register_forward_hook(lambda *a: calls.append(1))
    ag = ActionGPT(model, expander=exp)
    ag.prepare(["jump", "walk forward", "sit", "kick"])
    model.train()
    batch = {"text_0": ["jump", "sit"], "text_1": ["walk forward", "kick"], "length_0": [4, 4], "length_1": [5, 5],
             "features_0": torch.randn(2, 4, 6), "features_1": torch.randn(2, 5, 6)}
    with ag:
        model.training_loss(batch).backward()
    assert len(calls) == 1 and len(exp.calls) == 1
    enc = model.textencoder
    assert enc.projection[1].weight.grad.abs().sum() > 0 and enc.skel_embedding.weight.grad is not None
    assert all(p.grad is None for p in enc.text_model.parameters())


def test_second_install_on_the_class_is_refused(model):
    with ActionGPT(model, expander=ScriptedExpander()):
        with pytest.raises(ActionGPTError, match="already replaced"):
            ActionGPT(model, expander=ScriptedExpander())
