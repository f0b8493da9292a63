"""Opt-in: the MDM, T2M-GPT and MoMask adapters against real upstream checkouts (tiny random text models).

Set ACTIONGPT_UPSTREAM_MDM / ACTIONGPT_UPSTREAM_T2MGPT / ACTIONGPT_UPSTREAM_MOMASK to a checkout of
GuyTevet/motion-diffusion-model, Mael-zys/T2M-GPT or EricGuo5513/momask-codes. Their model code is
imported from where it is (nothing is copied). CLIP weights cannot be downloaded here, so `clip.load`
returns a tiny random CLIP (the real `clip` package's model class when it imports, else the stand-in);
MDM's SMPL layer is replaced by a placeholder and its BERT mode loads a tiny DistilBERT. MoMask needs
`einops`. The three codebases share top-level package names (`utils`, `models`), so each test
imports them afresh and drops them afterwards.
"""
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from actiongpt_plugin import ActionGPT
from standins import ScriptedExpander, tiny_distilbert
from test_upstream_real import _clip_module, _tiny_clip, checkout

pytestmark = pytest.mark.upstream
PHRASES = ["jump", "walk forward", "wave both hands"]
TOP_LEVEL = ("model", "models", "utils", "diffusion", "data_loaders", "options", "dataset")


@pytest.fixture
def upstream(monkeypatch):
    """Put a checkout first on sys.path, with fresh imports of its top-level packages; a tiny CLIP."""
    def clear():
        for name in [n for n in sys.modules if n.split(".")[0] in TOP_LEVEL]:
            del sys.modules[name]

    def use(name):
        root = checkout(name)
        clear()
        monkeypatch.syspath_prepend(root)
        clip, real = _clip_module(monkeypatch)
        tiny = _tiny_clip(clip, real)
        if real:  # the real clip.load would download ViT-B/32
            monkeypatch.setattr(clip, "load", lambda *a, **k: (_tiny_clip(clip, real), None))
        return clip, tiny

    yield use
    clear()


def hand_mean(clip, clip_model, descriptions, **tokenize):
    tokens = clip.tokenize(descriptions, truncate=True, **tokenize)
    if "context_length" in tokenize:  # MDM pads its 22-token ids back to 77
        tokens = torch.cat([tokens, tokens.new_zeros(len(descriptions), 77 - tokens.shape[1])], dim=1)
    return clip_model.encode_text(tokens).float().mean(0)


def test_real_mdm_clip_and_bert(upstream, monkeypatch, tmp_path):
    clip, _ = upstream("MDM")
    stub = types.ModuleType("model.rotation2xyz")  # SMPL files are not available

    class Rotation2xyz:
        def __init__(self, device, dataset="amass"):
            self.smpl_model = torch.nn.Module()

    stub.Rotation2xyz = Rotation2xyz
    monkeypatch.setitem(sys.modules, "model.rotation2xyz", stub)
    import model.mdm as mdm_module
    from model.mdm import MDM
    from utils.model_util import create_gaussian_diffusion, load_model_wo_clip
    from utils.sampler_util import ClassifierFreeSampleModel

    common = dict(modeltype="", njoints=263, nfeats=1, num_actions=1, translation=True, pose_rep="rot6d", glob=True,
                  glob_rot=[3.14, 0, 0], latent_dim=32, ff_size=64, num_layers=1, num_heads=2, dropout=0.0,
                  data_rep="hml_vec", dataset="humanml", clip_version="ViT-B/32", cond_mode="text", cond_mask_prob=0.1)
    torch.manual_seed(0)
    model = MDM(clip_dim=64, **common)
    exp = ScriptedExpander()
    base = model.encode_text(PHRASES)
    keys = list(model.state_dict())
    original = vars(model)["encode_text"]
    with ActionGPT(model, expander=exp, **{"embedding.long_text": "truncate"}) as ag:
        assert ag.adapter.name == "mdm" and list(model.state_dict()) == keys
        out = model.encode_text(PHRASES)
        wrapper = ClassifierFreeSampleModel(model)  # created after install: copies the new encode_text
        assert torch.equal(wrapper.encode_text(PHRASES), out)
        diffusion = create_gaussian_diffusion(SimpleNamespace(diffusion_steps=4, noise_schedule="cosine",
                                                              sigma_small=True, lambda_vel=0.0, lambda_rcxyz=0.0,
                                                              lambda_fc=0.0))
        y = {"text": PHRASES, "scale": torch.full((3,), 2.5), "mask": torch.ones(3, 1, 1, 6, dtype=torch.bool),
             "lengths": torch.tensor([6] * 3)}
        sample = diffusion.p_sample_loop(wrapper, (3, 263, 1, 6), clip_denoised=False, model_kwargs={"y": y})
        assert torch.equal(y["text_embed"], out)  # sampling cached the aggregated features
        saved = {k: v for k, v in model.state_dict().items() if not k.startswith("clip_model.")}
    assert out.shape == base.shape == (1, 3, 64) and sample.shape == (3, 263, 1, 6)
    for i, phrase in enumerate(PHRASES):  # MDM's own path: 20 CLIP tokens on HumanML3D
        assert torch.allclose(out[0, i], hand_mean(clip, model.clip_model, exp.describe(phrase), context_length=22),
                              atol=1e-2)
    assert vars(model)["encode_text"] is original and torch.equal(model.encode_text(PHRASES), base)
    torch.manual_seed(1)
    load_model_wo_clip(MDM(clip_dim=64, **common), dict(saved))

    # BERT mode: MDM downloads distilbert-base-uncased and hard-codes its width (768): a tiny 768-wide one.
    from transformers import DistilBertConfig, DistilBertModel

    from standins import VOCAB

    path = tiny_distilbert(tmp_path / "distilbert")  # tokenizer files
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=len(VOCAB), dim=768, n_layers=1, n_heads=12, hidden_dim=64,
                                     max_position_embeddings=128)).eval().save_pretrained(path)
    bert_load = mdm_module.load_bert
    monkeypatch.setattr(mdm_module, "load_bert", lambda _: bert_load(path))
    bert_model = MDM(clip_dim=64, arch="trans_dec", text_encoder_type="bert", **common)
    base_f, base_pad = bert_model.encode_text(PHRASES)
    with ActionGPT(bert_model, expander=exp) as ag:
        assert ag.adapter.granularity == "tokens"
        features, padding = bert_model.encode_text(PHRASES)
        x = torch.randn(3, 263, 1, 6)
        y = {"text": PHRASES, "mask": torch.ones(3, 1, 1, 6, dtype=torch.bool)}
        bert_model(x, torch.tensor([1, 2, 3]), y).sum().backward()
    assert features.shape[1:] == base_f.shape[1:] and padding.shape == (3, features.shape[0])
    states, pad = bert_model.bert_encode_text(exp.describe("jump"))
    n = int((~pad).any(0).nonzero().max()) + 1
    assert torch.allclose(features[:n, 0], states.mean(1)[:n], atol=1e-5) and padding[0, n:].all()
    assert bert_model.embed_text.weight.grad is not None
    f, p = bert_model.encode_text(PHRASES)
    assert torch.equal(f, base_f) and torch.equal(p, base_pad)


def test_real_t2mgpt_driver_and_clip_load(upstream):
    clip, clip_model = upstream("T2MGPT")
    from models.t2m_trans import Text2Motion_Transformer

    from actiongpt_plugin.adapters.t2mgpt import T2MGPT

    torch.manual_seed(0)
    trans = Text2Motion_Transformer(num_vq=16, embed_dim=32, clip_dim=64, block_size=8, num_layers=1, n_head=2,
                                    drop_out_rate=0.0, fc_rate=2)
    driver = T2MGPT(trans, clip_model, clip=clip)
    exp = ScriptedExpander()
    base = driver.clip_features(PHRASES)
    original_load = clip.load
    with ActionGPT(driver, expander=exp) as ag:
        assert ag.adapter.name == "t2mgpt"
        out = driver.clip_features(PHRASES)
        logits = driver(torch.randint(0, 16, (3, 4)), PHRASES)
        logits.sum().backward()
        motion = trans.sample(out[:1], False)
        # What train_t2m_trans.py does at module level, now through the patched clip.load:
        script_clip, _ = clip.load("ViT-B/32", device="cpu", jit=False)
        script_features = script_clip.encode_text(clip.tokenize(PHRASES, truncate=True)).float()
    assert clip.load is original_load and driver.clip_model is clip_model
    assert out.shape == base.shape and logits.shape == (3, 5, 17) and motion.dim() == 2
    assert trans.trans_base.cond_emb.weight.grad is not None
    for i, phrase in enumerate(PHRASES):
        assert torch.allclose(out[i], hand_mean(clip, clip_model, exp.describe(phrase)), atol=1e-5)
        real = vars(script_clip)["_actiongpt_real"]
        assert torch.allclose(script_features[i], hand_mean(clip, real, exp.describe(phrase)), atol=1e-5)
    assert torch.equal(driver.clip_features(PHRASES), base)


def test_real_momask_both_transformers(upstream):
    clip, _ = upstream("MOMASK")
    pytest.importorskip("einops")  # MoMask's own requirement
    from models.mask_transformer.transformer import MaskTransformer, ResidualTransformer

    opt = SimpleNamespace(num_tokens=16, num_quantizers=3, device="cpu")
    small = dict(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, dropout=0.0, clip_dim=64, cond_drop_prob=0.1,
                 clip_version="ViT-B/32", opt=opt)
    torch.manual_seed(0)
    t2m = MaskTransformer(code_dim=16, cond_mode="text", **small)
    res = ResidualTransformer(code_dim=16, cond_mode="text", shared_codebook=False, share_weight=False, **small)
    exp = ScriptedExpander()
    base = [t.encode_text(PHRASES) for t in (t2m, res)]
    keys = [list(t.state_dict()) for t in (t2m, res)]
    lengths = torch.tensor([8, 6, 8])
    with ActionGPT([t2m, res], expander=exp) as ag:
        assert ag.adapter.name == "momask"
        assert [list(t.state_dict()) for t in (t2m, res)] == keys
        outs = [t.encode_text(PHRASES) for t in (t2m, res)]
        t2m.train()
        loss, _, _ = t2m(torch.randint(0, 16, (3, 8)), PHRASES, lengths)
        loss.backward()
        ids = t2m.generate(PHRASES, lengths, timesteps=2, cond_scale=4)
        codes = res.generate(ids, PHRASES, lengths, cond_scale=2)
    assert exp.calls == [PHRASES] and ids.shape == (3, 8) and codes.shape[:2] == (3, 8)
    assert t2m.cond_emb.weight.grad is not None
    for t, out, b in zip((t2m, res), outs, base):
        assert out.shape == b.shape
        for i, phrase in enumerate(PHRASES):
            assert torch.allclose(out[i], hand_mean(clip, t.clip_model, exp.describe(phrase)), atol=1e-5)
        assert "encode_text" not in vars(t) and torch.equal(t.encode_text(PHRASES), b)
