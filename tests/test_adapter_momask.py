"""MoMask adapter against the MoMask stand-in: both transformers, each with its own tiny CLIP."""
import pytest
import torch

pytest.importorskip("transformers")
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.momask import MoMaskAdapter  # noqa: E402
from actiongpt_plugin.adapters.clip import clip_tokenizer  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from standins import ScriptedExpander, clip  # noqa: E402
from standins.momask import MaskTransformer, load_wo_clip, make_momask, state_dict_wo_clip  # noqa: E402

LABELS = ["jump", "walk forward", "wave both hands"]


@pytest.fixture
def pair():
    return make_momask()


def hand_mean(transformer, descriptions):
    return type(transformer).encode_text(transformer, descriptions).mean(0)


def test_matches_each_transformer_and_the_pair(pair):
    t2m, res = pair
    for model in (t2m, res, pair, list(pair)):
        assert MoMaskAdapter.matches(model)
    assert not MoMaskAdapter.matches(t2m.clip_model) and not MoMaskAdapter.matches([t2m, torch.nn.Linear(1, 1)])
    assert type(ActionGPT(pair, expander=ScriptedExpander()).adapter) is MoMaskAdapter


@pytest.mark.parametrize("aggregator", ["paper", "norm-mean"])
def test_both_transformers_equal_hand_computation(pair, aggregator):
    t2m, res = pair
    exp = ScriptedExpander()
    base = [t.encode_text(LABELS) for t in pair]
    with ActionGPT(pair, expander=exp, **{"embedding.aggregator": aggregator}) as ag:
        outs = [t.encode_text(LABELS) for t in pair]
        assert torch.equal(ag.text_encoder(LABELS), outs[0])
    assert exp.calls == [LABELS]  # one expansion serves both transformers
    for t, out, b in zip(pair, outs, base):
        assert out.shape == b.shape == (3, 64) and out.dtype == torch.float32
        for i, label in enumerate(LABELS):
            parts = type(t).encode_text(t, exp.describe(label))
            mean = parts.mean(0)
            if aggregator == "norm-mean":
                mean = mean * parts.norm(dim=1).mean() / mean.norm()
            assert torch.allclose(out[i], mean, atol=1e-5)
    assert torch.equal(outs[0], outs[1])  # each has its own CLIP, with the same ViT-B/32 weights


def test_training_generation_and_warm_cache(pair):
    t2m, res = pair
    calls = []
    for t in pair:
        t.clip_model.transformer.register_forward_hook(lambda *a: calls.append(1))
    exp = ScriptedExpander()
    ag = ActionGPT(pair, expander=exp)
    ag.prepare(LABELS)
    assert len(calls) == 1  # prepare embeds with the first transformer's CLIP...
    with ag:
        t2m.train()
        loss, _, _ = t2m(torch.randint(0, 16, (3, 6)), LABELS, torch.tensor([6, 4, 5]))
        loss.backward()
        assert len(calls) == 1 and t2m.trans.cond_emb.weight.grad.abs().sum() > 0
        t2m.eval()
        ids = t2m.generate(LABELS, torch.tensor([6, 4, 5]), timesteps=3, cond_scale=4)
        res.eval()
        codes = res.generate(ids.clamp_min(0), LABELS, torch.tensor([6, 4, 5]))
    assert ids.shape == (3, 6) and (ids[1, 4:] == -1).all() and codes.shape == (3, 6, 3)
    # ...and serves the residual transformer too: the cache key is the CLIP weights' content.
    assert len(calls) == 1 and len(exp.calls) == 1
    with torch.no_grad():
        res.clip_model.ln_final.weight.add_(0.01)  # other weights: embedded anew
    with ag:
        res.generate(ids.clamp_min(0), LABELS, torch.tensor([6, 4, 5]))
    assert len(calls) == 2
    assert all(p.grad is None for t in pair for p in t.clip_model.parameters())


def test_state_dict_unchanged_checkpoints_and_restore(pair):
    t2m, res = pair
    before = [t.state_dict() for t in pair]
    base = [t.encode_text(LABELS) for t in pair]
    ag = ActionGPT(pair, expander=ScriptedExpander()).install()
    for t, b in zip(pair, before):
        during = t.state_dict()
        assert list(during) == list(b) and all(torch.equal(during[k], b[k]) for k in b)
    fresh_t2m, fresh_res = make_momask(seed=7)
    load_wo_clip(fresh_t2m, state_dict_wo_clip(t2m))  # wrapped -> upstream
    load_wo_clip(res, state_dict_wo_clip(fresh_res))  # upstream -> wrapped
    res.load_state_dict(before[1])
    with pytest.raises(ActionGPTError, match="already replaced"):
        ActionGPT(t2m, expander=ScriptedExpander())
    ag.uninstall()
    for t, b, out in zip(pair, before, base):
        assert "encode_text" not in vars(t) and list(t.state_dict()) == list(b)
        assert torch.equal(t.encode_text(LABELS), out)


def test_long_description_is_split_not_truncated(pair):
    t2m, _ = pair
    sentence = "the person lifts the left knee up to the chest and then sets the foot back down on the ground."
    long = " ".join([sentence] * 6)  # ~120 CLIP tokens: the upstream path keeps the first 75
    with ActionGPT(t2m, expander=ScriptedExpander(table={"march": [long] * 4})) as ag:
        out = t2m.encode_text(["march"])[0]
        pieces = ag.adapter.text_budget.pieces(long)
    assert len(pieces) == 2 and all(len(clip_tokenizer(clip).encode(p)) <= 75 for p in pieces)
    parts = type(t2m).encode_text(t2m, pieces)
    expected = parts.mean(0) * parts.norm(dim=1).mean() / parts.mean(0).norm()
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, type(t2m).encode_text(t2m, [long])[0], atol=1e-3)


def test_requires_text_condition():
    from types import SimpleNamespace

    action = MaskTransformer(code_dim=4, cond_mode="action", latent_dim=8, ff_size=8, num_layers=1, num_heads=1,
                             clip_dim=4, opt=SimpleNamespace(num_tokens=4, device="cpu"), num_actions=3)
    assert not MoMaskAdapter.matches(action)
    with pytest.raises(ActionGPTError, match="no adapter matches"):
        ActionGPT(action, expander=ScriptedExpander())


def test_example_runs(run_example):
    out = run_example("momask")
    assert "step 1: loss" in out and "text model calls: 1;" in out and "residual codes (2, 8, 3)" in out
