"""T2M-GPT adapter: the driver and the ``clip.load`` patch, against the T2M-GPT and CLIP stand-ins."""
import sys

import pytest
import torch

pytest.importorskip("transformers")
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.adapters.t2mgpt import T2MGPT, T2MGPTAdapter  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from standins import ScriptedExpander  # noqa: E402
from standins import clip as standin_clip  # noqa: E402
from standins.t2mgpt import eval_t2m_trans, make_transformer, train_t2m_trans  # noqa: E402

LABELS = ["jump", "walk forward", "wave both hands"]


@pytest.fixture
def clip(monkeypatch):
    """T2M-GPT's scripts `import clip`: here that is the CLIP stand-in."""
    monkeypatch.setitem(sys.modules, "clip", standin_clip)
    return standin_clip


@pytest.fixture
def clip_model(clip):
    model, _ = clip.load("ViT-B/32", jit=False)
    for p in model.parameters():
        p.requires_grad = False
    return model


def hand_mean(clip, real, descriptions):
    return real.encode_text(clip.tokenize(descriptions, truncate=True)).float().mean(0)


def test_matches_the_driver_only(clip, clip_model):
    driver = T2MGPT(make_transformer(), clip_model)
    assert driver.clip is clip and T2MGPTAdapter.matches(driver)
    assert not T2MGPTAdapter.matches(driver.transformer) and not T2MGPTAdapter.matches(clip_model)
    assert type(ActionGPT(driver, expander=ScriptedExpander()).adapter) is T2MGPTAdapter


def test_driver_features_equal_hand_computation_and_restore(clip, clip_model):
    driver = T2MGPT(make_transformer(), clip_model)
    exp = ScriptedExpander()
    base = driver.clip_features(LABELS)
    keys = list(clip_model.state_dict())
    with ActionGPT(driver, expander=exp):
        assert driver.clip_model is not clip_model and list(driver.clip_model.state_dict()) == keys
        out = driver.clip_features(LABELS)
    assert out.shape == base.shape and out.dtype == torch.float32 and exp.calls == [LABELS]
    for i, label in enumerate(LABELS):
        assert torch.allclose(out[i], hand_mean(clip, clip_model, exp.describe(label)), atol=1e-5)
    assert driver.clip_model is clip_model and torch.equal(driver.clip_features(LABELS), base)


def test_driver_training_step_sampling_and_warm_cache(clip, clip_model):
    calls = []
    clip_model.transformer.register_forward_hook(lambda *a: calls.append(1))
    driver = T2MGPT(make_transformer(), clip_model)
    exp = ScriptedExpander()
    ag = ActionGPT(driver, expander=exp)
    ag.prepare(LABELS)
    assert len(calls) == 1
    with ag:
        logits = driver(torch.randint(0, 16, (3, 4)), LABELS)
        logits.sum().backward()
        motions = driver.sample(LABELS[:2])
    assert logits.shape == (3, 5, 17) and len(motions) == 2 and all(m.shape[0] == 1 for m in motions)
    assert len(calls) == 1 and len(exp.calls) == 1
    assert driver.transformer.cond_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip_model.parameters())


def test_clip_load_patch_runs_the_scripts_unchanged(clip, clip_model):
    original_load = clip.load
    exp = ScriptedExpander()
    trans = make_transformer()
    batches = [(LABELS, torch.randint(0, 16, (3, 5))), (LABELS[:2], torch.randint(0, 16, (2, 5)))]
    with ActionGPT(T2MGPT(clip_model=clip_model), expander=exp) as ag:
        assert clip.load is not original_load
        trained = train_t2m_trans(trans, batches)
        proxy = trained["clip_model"]  # the script's global CLIP, loaded by the patched clip.load
        real = vars(proxy)["_actiongpt_real"]
        assert isinstance(proxy, clip.CLIP) and list(proxy.state_dict()) == list(real.state_dict())
        assert real.positional_embedding.dtype == torch.float16  # the script's convert_weights reached it
        evaluated = eval_t2m_trans(trans, LABELS)
        assert ag.text_model_calls >= 1
    assert clip.load is original_load
    for i, label in enumerate(LABELS):  # fp16 CLIP, as the scripts run it
        assert torch.allclose(trained["features"][0][i], hand_mean(clip, real, exp.describe(label)), atol=5e-3)
    assert len(evaluated["motions"]) == 3 and all(m.shape[0] == 1 for m in evaluated["motions"])
    tokens = clip.tokenize(LABELS)
    assert torch.equal(proxy.encode_text(tokens), real.encode_text(tokens))  # kept proxies fall back after uninstall


def test_driver_without_clip_adopts_the_first_loaded(clip):
    driver = T2MGPT()
    exp = ScriptedExpander()
    ag = ActionGPT(driver, expander=exp)
    assert ag.expand(LABELS)["jump"] == exp.describe("jump")
    with pytest.raises(ActionGPTError, match="no CLIP model"):
        ag.prepare(LABELS)
    with ag:
        evaluated = eval_t2m_trans(make_transformer(), LABELS)
        assert driver.clip_model is evaluated["clip_model"]
        ag.prepare(LABELS)  # now possible, with the script's CLIP
    real = ag.adapter.real
    assert driver.clip_model is real and "_actiongpt_adapter" not in vars(real)
    assert torch.allclose(evaluated["features"][1], hand_mean(clip, real, exp.describe("walk forward")), atol=5e-3)


def test_example_runs(clip, run_example):
    out = run_example("t2mgpt")
    assert "step 1: loss" in out and "clip.load restored: True" in out and "-> motions 2" in out


def test_driver_deepcopies_and_pickles(clip, clip_model):
    import copy
    import pickle

    driver = T2MGPT(make_transformer(), clip_model)
    twin = copy.deepcopy(driver)
    assert twin.clip is clip and twin.clip_model is not clip_model
    assert torch.equal(twin.clip_features(LABELS), driver.clip_features(LABELS))
    with ActionGPT(driver, expander=ScriptedExpander()):
        out = driver.clip_features(LABELS)
        ema = copy.deepcopy(driver)  # a plain copy: the real CLIP
        carried = pickle.loads(pickle.dumps(driver))  # the proxy and its ActionGPT travel
    assert type(ema.clip_model) is type(clip_model) and ema.clip is clip
    assert torch.equal(ema.clip_features(LABELS), T2MGPT(None, clip_model).clip_features(LABELS))
    assert torch.allclose(carried.clip_features(LABELS), out, atol=1e-6)
    vars(carried.clip_model)["_actiongpt_adapter"].ag.uninstall()
    assert not hasattr(clip.load, "_actiongpt_adapter")


def test_clip_text_of_unprepared_labels_matches_known_phrases(clip, clip_model):
    class Knowing(ScriptedExpander):
        def known_phrases(self):
            return ["T-Pose"]

    exp = Knowing()
    driver = T2MGPT(make_transformer(), clip_model)
    with ActionGPT(driver, expander=exp):
        driver.clip_features(["T-Pose", "jump"])
    assert exp.calls == [["T-Pose", "jump"]]
