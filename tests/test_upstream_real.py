"""Opt-in: the adapter checks against real upstream checkouts (tiny random text models).

Set ACTIONGPT_UPSTREAM_TEMOS / ACTIONGPT_UPSTREAM_TEACH / ACTIONGPT_UPSTREAM_MOTIONCLIP to a
checkout of Mathux/TEMOS, athn-nik/teach or GuyTevet/MotionCLIP; each needs its own text-path
dependencies importable (pytorch_lightning for TEMOS/TEACH, hydra-core for TEACH; MotionCLIP's
`clip` package, else the CLIP stand-in is used in its place). Nothing is copied from the
checkouts: they are imported from where they are.
"""
import os
import sys

import pytest
import torch

from actiongpt_plugin import ActionGPT
from standins import ScriptedExpander, tiny_distilbert

pytestmark = pytest.mark.upstream
PHRASES = ["jump", "walk forward", "wave both hands"]


def checkout(name):
    path = os.environ.get(f"ACTIONGPT_UPSTREAM_{name}")
    if not path:
        pytest.skip(f"set ACTIONGPT_UPSTREAM_{name} to a checkout to run this test")
    if not os.path.isdir(path):
        pytest.fail(f"ACTIONGPT_UPSTREAM_{name}={path} is not a directory")
    return path


@pytest.fixture
def on_path(monkeypatch):
    def add(path):
        monkeypatch.syspath_prepend(path)
    return add


def check_token_adapter(ag, encoder, exp, method):
    """Shapes, hand computation (paper), bit-for-bit restoration, state_dict keys."""
    base = encoder.get_last_hidden_state(PHRASES)
    keys = list(encoder.state_dict())
    with ag:
        assert list(encoder.state_dict()) == keys
        features, mask = encoder.get_last_hidden_state(PHRASES, return_mask=True)
    assert features.shape[0] == 3 and features.shape[2] == base.shape[2] and mask.dtype == torch.bool
    for i, phrase in enumerate(PHRASES):
        states, m = method(encoder, exp.describe(phrase), return_mask=True)
        n = states.shape[1]
        assert torch.allclose(features[i, :n], states.mean(0), atol=1e-5)
        assert torch.equal(mask[i, :n], m.any(0))
    assert torch.equal(encoder.get_last_hidden_state(PHRASES), base)


def test_real_temos(on_path, tmp_path):
    on_path(checkout("TEMOS"))
    pytest.importorskip("pytorch_lightning")
    from temos.model.textencoder.distilbert import DistilbertEncoderBase
    from temos.model.textencoder.distilbert_actor import DistilbertActorAgnosticEncoder

    torch.manual_seed(0)
    encoder = DistilbertActorAgnosticEncoder(tiny_distilbert(tmp_path / "distilbert"), latent_dim=16, ff_size=32,
                                             num_layers=1, num_heads=2, dropout=0.0).eval()
    exp = ScriptedExpander()
    ag = ActionGPT(encoder, expander=exp)
    assert ag.adapter.name == "temos"
    check_token_adapter(ag, encoder, exp, DistilbertEncoderBase.get_last_hidden_state)
    base = encoder(PHRASES)
    with ag:
        encoder.train()
        encoder(PHRASES).rsample().sum().backward()
        assert encoder.projection[1].weight.grad is not None
        assert all(p.grad is None for p in encoder.text_model.parameters())
    encoder.eval()
    assert "get_last_hidden_state" not in vars(encoder) and torch.equal(encoder(PHRASES).loc, base.loc)


def test_real_teach(on_path, tmp_path, monkeypatch):
    on_path(checkout("TEACH"))
    pl = pytest.importorskip("pytorch_lightning")
    hydra_utils = pytest.importorskip("hydra.utils")
    from teach.model.textencoder.distilbert import DistilbertEncoderBase
    from teach.model.textencoder.text_hist import TextHist

    tiny_distilbert(tmp_path / "deps" / "distilbert-base-uncased")
    monkeypatch.setattr(hydra_utils, "get_original_cwd", lambda: str(tmp_path))
    kwargs = dict(nfeats=6, latent_dim=16, ff_size=32, num_layers=1, num_heads=2, dropout=0.0)
    torch.manual_seed(0)
    encoder = TextHist("/elsewhere/deps/distilbert-base-uncased", **kwargs).eval()
    original = DistilbertEncoderBase.__dict__["get_last_hidden_state"]
    exp = ScriptedExpander()
    ag = ActionGPT(encoder, expander=exp)
    assert ag.adapter.name == "teach"
    check_token_adapter(ag, encoder, exp, original)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": encoder.state_dict(), "hyper_parameters": dict(encoder.hparams),
                "pytorch-lightning_version": pl.__version__}, ckpt)
    with ag:
        loaded = TextHist.load_from_checkpoint(ckpt)  # a new instance (Lightning 2 refuses instance calls)
        assert loaded is not encoder
        features = loaded.get_last_hidden_state(["jump"])
        dist = loaded(["jump"], hframes=torch.randn(1, 1, 6))
    assert dist.loc.shape == (1, 16)
    states, _ = original(loaded, exp.describe("jump"), return_mask=True)
    assert torch.allclose(features[0], states.mean(0), atol=1e-5)
    assert DistilbertEncoderBase.__dict__["get_last_hidden_state"] is original


def _clip_module(monkeypatch):
    try:
        import clip  # the real OpenAI CLIP package, when it imports here
        return clip, True
    except Exception:  # noqa: BLE001 - usually torchvision/PIL missing
        from standins import clip

        monkeypatch.setitem(sys.modules, "clip", clip)
        return clip, False


def _tiny_clip(clip, real):
    torch.manual_seed(0)
    if real:
        model = clip.model.CLIP(embed_dim=64, image_resolution=32, vision_layers=1, vision_width=64,
                                vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=64,
                                transformer_heads=1, transformer_layers=1)
    else:
        model = clip.build_tiny()
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model


def test_real_motionclip(on_path, monkeypatch):
    root = checkout("MOTIONCLIP")
    on_path(root)
    clip, real_clip = _clip_module(monkeypatch)
    # SMPL files are not available: the SMPL layer is replaced as MotionCLIP's own tests would need.
    import types

    stub = types.ModuleType("src.models.rotation2xyz")
    stub.Rotation2xyz = lambda device: None
    monkeypatch.setitem(sys.modules, "src.models.rotation2xyz", stub)
    from src.models.get_model import get_model
    from src.utils.misc import load_model_wo_clip

    clip_model = _tiny_clip(clip, real_clip)
    parameters = dict(modeltype="motionclip", njoints=4, nfeats=6, num_frames=10, num_classes=1, translation=True,
                      pose_rep="rot6d", glob=True, glob_rot=[3.14, 0, 0], latent_dim=64, ff_size=64, num_layers=1,
                      num_heads=2, dropout=0.0, activation="gelu", device="cpu", lambdas={"rc": 1.0},
                      jointstype="vertices", vertstrans=False, clip_lambdas={"text": {"cosine": 1.0}})
    model = get_model(dict(parameters), clip_model)
    exp = ScriptedExpander()
    tokens = clip.tokenize(PHRASES)
    base = model.clip_model.encode_text(tokens)
    keys = list(model.state_dict())
    ag = ActionGPT(model, expander=exp)
    assert ag.adapter.name == "motionclip"
    with ag:
        assert list(model.state_dict()) == keys
        out = model.clip_model.encode_text(tokens)
        batch = {"x": torch.randn(3, 4, 6, 10), "y": torch.zeros(3, dtype=torch.long),
                 "mask": torch.ones(3, 10, dtype=torch.bool), "lengths": torch.tensor([10] * 3), "clip_text": PHRASES}
        batch.update(model.encoder(batch))
        batch["z"] = batch["mu"]
        loss, _ = model.compute_clip_losses(batch)
        loss.backward()
        generated = model.generate(out.float()[None], torch.tensor([[10]] * 3), is_clip_features=True)
        saved = {k: v for k, v in model.state_dict().items() if not k.startswith("clip_model.")}
    assert out.shape == base.shape and generated["output"].shape[0] == 3
    for i, phrase in enumerate(PHRASES):
        parts = clip_model.encode_text(clip.tokenize(exp.describe(phrase), truncate=True))
        assert torch.allclose(out[i], parts.mean(0), atol=1e-5)
    assert model.clip_model is clip_model and torch.equal(model.clip_model.encode_text(tokens), base)
    fresh = get_model(dict(parameters), _tiny_clip(clip, real_clip))
    load_model_wo_clip(fresh, saved)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())


def test_standin_clip_tokenizer_matches_real_clip(monkeypatch):
    checkout("MOTIONCLIP")
    clip, real = _clip_module(monkeypatch)
    if not real:
        pytest.skip("the real `clip` package does not import here")
    from standins import clip as standin

    texts = ["a photo of a cat", "T-Pose", "walk and turn left", "don't stop!!", "jump 3 times, then  sit",
             "café naïve", "A person JUMPS forward!", "x" * 300, "kick (right leg)"]
    ids = clip.tokenize(texts, truncate=True)
    assert torch.equal(ids.long(), standin.tokenize(texts, truncate=True))
    real_tok, standin_tok = clip.simple_tokenizer.SimpleTokenizer(), standin.simple_tokenizer.SimpleTokenizer()
    assert all(real_tok.decode(row.tolist()) == standin_tok.decode(row.tolist()) for row in ids)
