"""MotionCLIP adapter against the MotionCLIP stand-in (tiny CLIP, real CLIP BPE ids)."""
import copy
import pickle

import pytest
import torch

pytest.importorskip("transformers")
from standins.clip import simple_tokenizer  # noqa: E402
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.motionclip import MotionClipAdapter  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from standins import ScriptedExpander, clip  # noqa: E402
from standins.motionclip import (  # noqa: E402
    load_model_wo_clip, make_motionclip, state_dict_wo_clip, text_to_clip_features,
)

LABELS = ["jump", "walk forward", "wave both hands"]


@pytest.fixture
def model():
    return make_motionclip()


def real_encode(model_clip, texts):
    return type(model_clip).encode_text(model_clip, clip.tokenize(texts, truncate=True))


def test_standin_tokenizer_has_clip_ids():
    ids = clip.tokenize("a photo of a cat")
    assert ids.dtype == torch.int64 and ids.shape == (1, 77)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    with pytest.raises(RuntimeError, match="too long"):
        clip.tokenize("jump " * 80)
    cut = clip.tokenize("jump " * 80, truncate=True)[0]
    assert cut[0] == 49406 and cut[-1] == 49407
    tok = simple_tokenizer.SimpleTokenizer()
    assert tok.decode(tok.encode("A person JUMPS forward!")) == "a person jumps forward ! "


def test_matches_only_motionclip(model):
    assert MotionClipAdapter.matches(model)
    assert not MotionClipAdapter.matches(model.clip_model) and not MotionClipAdapter.matches(torch.nn.Linear(1, 1))
    assert type(ActionGPT(model, expander=ScriptedExpander()).adapter) is MotionClipAdapter


@pytest.mark.parametrize("aggregator", ["paper", "norm-mean"])
def test_encode_text_equals_hand_computation(model, aggregator):
    exp = ScriptedExpander()
    real = model.clip_model
    tokens = clip.tokenize(LABELS)
    base = real.encode_text(tokens)
    with ActionGPT(model, expander=exp, **{"embedding.aggregator": aggregator}) as ag:
        out = model.clip_model.encode_text(tokens)
        assert torch.equal(ag.text_encoder(tokens), out)
    assert out.shape == base.shape and out.dtype == base.dtype
    assert exp.calls == [LABELS]  # the labels, decoded back from CLIP ids
    for i, label in enumerate(LABELS):
        parts = real_encode(real, exp.describe(label))
        mean = parts.mean(0)
        if aggregator == "paper":
            assert torch.allclose(out[i], mean, atol=1e-5)
        else:
            assert torch.allclose(out[i], mean * parts.norm(dim=1).mean() / mean.norm(), atol=1e-5)


def test_prepared_labels_are_recovered_from_tokens(model):
    exp = ScriptedExpander(table={"T-Pose": ["a person stands with arms out"] * 4})
    ag = ActionGPT(model, expander=exp, **{"embedding.on_missing": "strict"})
    ag.prepare(["T-Pose", "jump"])
    with ag:
        out = text_to_clip_features(model, ["T-Pose", "jump"])  # CLIP decodes 't - pose'
    assert out.shape == (1, 2, 64) and exp.calls == [["T-Pose", "jump"]]
    expected = real_encode(ag.adapter.real, exp.describe("T-Pose")).mean(0)
    assert torch.allclose(out[0, 0], expected, atol=1e-5)


def test_long_descriptions_are_truncated_not_rejected(model):
    long = ["a person " + "walks forward and " * 40 + "stops"] * 4
    with ActionGPT(model, expander=ScriptedExpander(table={"walk": long})):
        out = text_to_clip_features(model, ["walk"])
    assert out.shape == (1, 1, 64) and torch.isfinite(out).all()


def test_proxy_adds_nothing_and_checkpoints_load_both_ways(model):
    real = model.clip_model
    before = model.state_dict()
    params = list(model.parameters())
    ag = ActionGPT(model, expander=ScriptedExpander()).install()
    proxy = model.clip_model
    assert proxy is not real and isinstance(proxy, type(real))
    during = model.state_dict()
    assert list(during) == list(before) and all(during[k] is before[k] or torch.equal(during[k], before[k]) for k in before)
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    saved = state_dict_wo_clip(model)  # MotionCLIP's checkpoints leave CLIP out
    upstream = make_motionclip(seed=5)
    load_model_wo_clip(upstream, saved)  # wrapped -> upstream
    load_model_wo_clip(model, state_dict_wo_clip(make_motionclip(seed=6)))  # upstream -> wrapped
    model.load_state_dict(before)  # full state dict, strict
    ag.uninstall()
    assert model.clip_model is real and list(model.state_dict()) == list(before)


def test_uninstall_restores_bit_for_bit(model):
    tokens = clip.tokenize(LABELS)
    real = model.clip_model
    base = real.encode_text(tokens)
    with ActionGPT(model, expander=ScriptedExpander()):
        assert not torch.equal(model.clip_model.encode_text(tokens), base)
        model.eval()
    assert model.clip_model is real and type(real) is clip.CLIP and "_actiongpt_adapter" not in vars(real)
    assert torch.equal(model.clip_model.encode_text(tokens), base) and not model.clip_model.training


def test_training_step_and_warm_cache(model):
    calls = []
    model.clip_model.transformer.register_forward_hook(lambda *a: calls.append(1))
    exp = ScriptedExpander()
    ag = ActionGPT(model, expander=exp)
    ag.prepare(LABELS)
    assert len(calls) == 1
    x = torch.randn(3, 4, 6, 10)
    batch = {"x": x, "mask": torch.ones(3, 10, dtype=torch.bool), "clip_text": LABELS}
    with ag:
        model(batch)
        loss, losses = model.compute_loss(batch)
        loss.backward()
    assert "text_cosine" in losses and len(calls) == 1 and len(exp.calls) == 1
    assert model.encoder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip_model.parameters())


def test_generate_from_aggregated_features(model):
    with ActionGPT(model, expander=ScriptedExpander()):
        features = text_to_clip_features(model, ["jump", "run"])
        out = model.generate(features, torch.tensor([[8], [8]]), is_clip_features=True)
    assert out["output"].shape == (2, 4, 6, 8)


def test_proxy_follows_dtype_changes_pickles_with_actiongpt_and_deepcopies_as_real(model):
    tokens = clip.tokenize(LABELS)
    with ActionGPT(model, expander=ScriptedExpander()) as ag:
        model.half()
        assert model.clip_model.dtype == torch.float16  # proxy and real share tensors
        real = model.clip_model.__dict__["_actiongpt_real"]
        assert real.positional_embedding.dtype == torch.float16
        model.float()
        out = model.clip_model.encode_text(tokens)
        clone = pickle.loads(pickle.dumps(model))  # spawned workers: the proxy and its ActionGPT travel
        copied = copy.deepcopy(model)  # a plain copy of the real CLIP
    assert type(copied.clip_model) is type(real)
    assert isinstance(clone.clip_model, type(real)) and type(clone.clip_model) is not type(real)
    for other in (clone, copied):
        assert list(other.state_dict()) == list(model.state_dict())
    carried = clone.clip_model.__dict__["_actiongpt_adapter"]
    assert carried is not ag.adapter and carried.installed and carried.ag.descriptions == ag.descriptions
    assert torch.allclose(clone.clip_model.encode_text(tokens), out, atol=1e-6)
    carried.ag.uninstall()
    assert type(clone.clip_model) is type(real)
    assert torch.equal(clone.clip_model.encode_text(tokens), model.clip_model.encode_text(tokens))


def test_concat_is_refused_for_pooled_features(model):
    with pytest.raises(ActionGPTError, match="pooled"):
        ActionGPT(model, expander=ScriptedExpander(), **{"embedding.aggregator": "concat"})


def test_empty_padding_text_keeps_clip_features(model):
    exp = ScriptedExpander()
    real = model.clip_model
    with ActionGPT(model, expander=exp):
        out = text_to_clip_features(model, ["jump", "", "run"])[0]  # visualize.py pads grids with ''
    assert exp.calls == [["jump", "run"]]
    assert torch.equal(out[1], real.encode_text(clip.tokenize([""]))[0])
    assert torch.allclose(out[2], real_encode(real, exp.describe("run")).mean(0), atol=1e-5)


class KnowingExpander(ScriptedExpander):
    """An expander that can list the phrases it knows (as Expander.known_phrases does for packs and stores)."""

    def known_phrases(self):
        return list(self.table)


def test_decoded_text_finds_known_labels_in_canonical_form(model):
    exp = KnowingExpander(table={"T-Pose": ["a person stands with arms out"] * 4, "Walk, Forward!": ["a person walks"] * 4})
    ag = ActionGPT(model, expander=exp)
    with ag:  # nothing prepared: CLIP gives back 't - pose' and 'walk , forward !'
        out = text_to_clip_features(model, ["T-Pose", "walk , forward !", "jump"])[0]
    assert exp.calls == [["T-Pose", "Walk, Forward!", "jump"]]
    assert torch.allclose(out[0], real_encode(ag.adapter.real, exp.describe("T-Pose")).mean(0), atol=1e-5)
    ag2 = ActionGPT(model, expander=ScriptedExpander(table=exp.table))
    ag2.expand(["Walk, Forward!"])  # registered labels match canonically too
    assert ag2.adapter.label_for("walk forward") == "Walk, Forward!" and ag2.adapter.label_for("run") == "run"


def test_pack_labels_are_found_from_clip_tokens(model, tmp_path):
    """Needs Expander.known_phrases (the coordinator's expander change): the pack's phrases."""
    import json

    pack = tmp_path / "gpt3_annotations.json"
    table = {"T-Pose": [f"a person stands in a t pose {i}" for i in range(4)]}
    pack.write_text(json.dumps(table))
    ag = ActionGPT(model, backend="pack", **{"pack.path": str(pack), "store.path": str(tmp_path / "s.sqlite")})
    with ag:
        out = text_to_clip_features(model, ["T-Pose"])[0]
    assert ag.descriptions == {"T-Pose": table["T-Pose"]}
    assert torch.allclose(out[0], real_encode(ag.adapter.real, table["T-Pose"]).mean(0), atol=1e-5)
    ag.close()
