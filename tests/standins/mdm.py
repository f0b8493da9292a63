"""MDM stand-in (interface of GuyTevet/motion-diffusion-model d4fd88c, MIT).

What the adapter touches, with MDM's names, signatures and shapes:
- ``MDM(modeltype, njoints, nfeats, num_actions, translation, pose_rep, glob, glob_rot, latent_dim,
  ff_size, num_layers, num_heads, dropout, ablation, activation, legacy, data_rep, dataset, clip_dim,
  arch, emb_trans_dec, clip_version, **kargs)`` with ``cond_mode`` 'text', ``text_encoder_type``
  'clip' (``clip_model`` from ``clip.load`` + ``convert_weights``, frozen; ``self.encode_text =
  self.clip_encode_text``, an instance attribute) or 'bert' (``clip_model`` = a frozen DistilBERT
  wrapper, ``self.encode_text = self.bert_encode_text``; needs arch 'trans_dec').
- ``clip_encode_text(raw_text)``: on 'humanml'/'kit' tokenised with ``context_length=22,
  truncate=True`` (20 tokens) and zero-padded to 77; else ``truncate=True`` at 77; returns
  ``encode_text(...).float().unsqueeze(0)`` = [1, bs, D]. ``bert_encode_text`` returns
  ([T, bs, 768], mask [bs, T] True = padding).
- ``forward(x, timesteps, y)`` uses ``y['text_embed']`` when present, else ``self.encode_text(y['text'])``.
- ``_apply`` and ``train`` return None (so ``model.to(dev)`` gives None), as in MDM.
- ``ClassifierFreeSampleModel`` copies ``model.encode_text`` when created; ``load_model_wo_clip``
  asserts that only ``clip_model.*`` (and positional-encoding) keys are missing;
  ``p_sample_loop`` caches ``text_embed`` once per batch as MDM's diffusion does.
The motion layers are small; SMPL (``rot2xyz``) is a placeholder object.
"""
from copy import deepcopy

import numpy as np
import torch
from torch import nn

from . import clip


class Rotation2xyz:
    """Placeholder for MDM's SMPL layer (a plain object holding ``smpl_model``, not a submodule)."""

    def __init__(self, device, dataset="amass"):
        self.smpl_model = nn.Module()


class BERT(nn.Module):
    def __init__(self, modelpath: str):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(modelpath)
        self.text_model = AutoModel.from_pretrained(modelpath)

    def forward(self, texts):
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True)
        output = self.text_model(**encoded.to(self.text_model.device)).last_hidden_state
        return output, encoded.attention_mask.to(dtype=bool)


def load_bert(model_path):
    bert = BERT(model_path)
    bert.eval()
    for p in bert.parameters():
        p.requires_grad = False
    return bert


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, dropout=0.1, max_len=5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-np.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe.unsqueeze(1))  # [max_len, 1, d]

    def forward(self, x):
        return self.dropout(x + self.pe[: x.shape[0]])


class TimestepEmbedder(nn.Module):
    def __init__(self, latent_dim, sequence_pos_encoder):
        super().__init__()
        self.sequence_pos_encoder = sequence_pos_encoder
        self.time_embed = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.SiLU(), nn.Linear(latent_dim, latent_dim))

    def forward(self, timesteps):
        return self.time_embed(self.sequence_pos_encoder.pe[timesteps]).permute(1, 0, 2)  # [1, bs, d]


class MDM(nn.Module):
    def __init__(self, modeltype, njoints, nfeats, num_actions, translation, pose_rep, glob, glob_rot,
                 latent_dim=256, ff_size=1024, num_layers=8, num_heads=4, dropout=0.1, ablation=None,
                 activation="gelu", legacy=False, data_rep="rot6d", dataset="amass", clip_dim=512,
                 arch="trans_enc", emb_trans_dec=False, clip_version=None, **kargs):
        super().__init__()
        self.modeltype, self.njoints, self.nfeats, self.num_actions = modeltype, njoints, nfeats, num_actions
        self.data_rep, self.dataset, self.pose_rep = data_rep, dataset, pose_rep
        self.glob, self.glob_rot, self.translation = glob, glob_rot, translation
        self.latent_dim, self.clip_dim, self.arch = latent_dim, clip_dim, arch
        self.input_feats = njoints * nfeats
        self.cond_mode = kargs.get("cond_mode", "no_cond")
        self.cond_mask_prob = kargs.get("cond_mask_prob", 0.0)
        self.input_process = nn.Linear(self.input_feats, latent_dim)
        self.sequence_pos_encoder = PositionalEncoding(latent_dim, dropout, max_len=kargs.get("pos_embed_max_len", 64))
        if arch == "trans_enc":
            layer = nn.TransformerEncoderLayer(latent_dim, num_heads, ff_size, dropout, activation)
            self.seqTransEncoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        elif arch == "trans_dec":
            layer = nn.TransformerDecoderLayer(latent_dim, num_heads, ff_size, dropout, activation)
            self.seqTransDecoder = nn.TransformerDecoder(layer, num_layers)
        else:
            raise ValueError("Please choose correct architecture [trans_enc, trans_dec]")
        self.embed_timestep = TimestepEmbedder(latent_dim, self.sequence_pos_encoder)
        if "text" in self.cond_mode:
            self.text_encoder_type = kargs.get("text_encoder_type", "clip")
            if self.text_encoder_type == "clip":
                self.clip_version = clip_version
                self.clip_model = self.load_and_freeze_clip(clip_version)
                self.encode_text = self.clip_encode_text
            elif self.text_encoder_type == "bert":
                assert self.arch == "trans_dec"
                self.clip_model = load_bert(kargs["bert_model_path"])  # upstream: distilbert-base-uncased
                self.encode_text = self.bert_encode_text
                self.clip_dim = self.clip_model.text_model.config.dim  # upstream: 768 (distilbert-base)
            else:
                raise ValueError("We only support [CLIP, BERT] text encoders")
            self.embed_text = nn.Linear(self.clip_dim, latent_dim)
        self.output_process = nn.Linear(latent_dim, self.input_feats)
        self.rot2xyz = Rotation2xyz(device="cpu", dataset=dataset)

    def parameters_wo_clip(self):
        return [p for name, p in self.named_parameters() if not name.startswith("clip_model.")]

    def load_and_freeze_clip(self, clip_version):
        clip_model, _ = clip.load(clip_version, device="cpu", jit=False)
        clip.model.convert_weights(clip_model)
        clip_model.eval()
        for p in clip_model.parameters():
            p.requires_grad = False
        return clip_model

    def mask_cond(self, cond, force_mask=False):
        bs = cond.shape[-2]
        if force_mask:
            return torch.zeros_like(cond)
        if self.training and self.cond_mask_prob > 0.0:
            mask = torch.bernoulli(torch.ones(bs, device=cond.device) * self.cond_mask_prob).view(1, bs, 1)
            return cond * (1.0 - mask)
        return cond

    def clip_encode_text(self, raw_text):
        device = next(self.parameters()).device
        max_text_len = 20 if self.dataset in ["humanml", "kit"] else None
        if max_text_len is not None:
            default_context_length, context_length = 77, max_text_len + 2
            texts = clip.tokenize(raw_text, context_length=context_length, truncate=True).to(device)
            zero_pad = torch.zeros([texts.shape[0], default_context_length - context_length], dtype=texts.dtype,
                                   device=device)
            texts = torch.cat([texts, zero_pad], dim=1)
        else:
            texts = clip.tokenize(raw_text, truncate=True).to(device)
        return self.clip_model.encode_text(texts).float().unsqueeze(0)

    def bert_encode_text(self, raw_text):
        enc_text, mask = self.clip_model(raw_text)  # mask: True = real token
        return enc_text.permute(1, 0, 2), ~mask  # [T, bs, 768], True = padding

    def forward(self, x, timesteps, y=None):
        bs, njoints, nfeats, nframes = x.shape
        time_emb = self.embed_timestep(timesteps)  # [1, bs, d]
        force_mask = y.get("uncond", False)
        text_mask = None
        enc_text = y["text_embed"] if "text_embed" in y else self.encode_text(y["text"])
        if type(enc_text) == tuple:  # noqa: E721 - as upstream
            enc_text, text_mask = enc_text
        text_emb = self.embed_text(self.mask_cond(enc_text, force_mask=force_mask))
        xseq = self.input_process(x.reshape(bs, njoints * nfeats, nframes).permute(2, 0, 1))  # [nframes, bs, d]
        if self.arch == "trans_enc":
            xseq = self.sequence_pos_encoder(torch.cat((text_emb + time_emb, xseq), axis=0))
            output = self.seqTransEncoder(xseq)[1:]
        else:
            xseq = self.sequence_pos_encoder(torch.cat((time_emb, xseq), axis=0))
            output = self.seqTransDecoder(tgt=xseq, memory=text_emb, memory_key_padding_mask=text_mask)[1:]
        return self.output_process(output).permute(1, 2, 0).reshape(bs, njoints, nfeats, nframes)

    def _apply(self, fn):  # MDM's quirk: returns None, so `model = model.to(dev)` gives None
        super()._apply(fn)
        self.rot2xyz.smpl_model._apply(fn)

    def train(self, *args, **kwargs):  # returns None too
        super().train(*args, **kwargs)
        self.rot2xyz.smpl_model.train(*args, **kwargs)


class ClassifierFreeSampleModel(nn.Module):
    """utils/sampler_util.py: the guidance wrapper, which copies ``encode_text`` when created."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        assert self.model.cond_mask_prob > 0, "a guided diffusion needs a model trained with cond_mask_prob > 0"
        self.rot2xyz = self.model.rot2xyz
        self.translation, self.njoints, self.nfeats = model.translation, model.njoints, model.nfeats
        self.data_rep, self.cond_mode = model.data_rep, model.cond_mode
        self.encode_text = self.model.encode_text

    def forward(self, x, timesteps, y=None):
        y_uncond = deepcopy(y)
        y_uncond["uncond"] = True
        out = self.model(x, timesteps, y)
        out_uncond = self.model(x, timesteps, y_uncond)
        return out_uncond + (y["scale"].view(-1, 1, 1, 1) * (out - out_uncond))

    def __getattr__(self, name):
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            return getattr(nn.Module.__getattr__(self, "model"), name)


def load_model_wo_clip(model, state_dict):
    state_dict = dict(state_dict)
    del state_dict["sequence_pos_encoder.pe"]
    del state_dict["embed_timestep.sequence_pos_encoder.pe"]
    missing_keys, unexpected_keys = model.load_state_dict(state_dict, strict=False)
    assert len(unexpected_keys) == 0
    assert all(k.startswith("clip_model.") or "sequence_pos_encoder" in k for k in missing_keys)


def state_dict_wo_clip(model):
    """What MDM's training loop saves: everything but ``clip_model.*``."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("clip_model.")}


def p_sample_loop(model, shape, y, steps=3, seed=0):
    """MDM's diffusion sampling, reduced to its text path: ``text_embed`` is computed once per batch."""
    if "text" in y:
        y["text_embed"] = model.encode_text(y["text"])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    for t in reversed(range(steps)):
        x = x - 0.1 * model(x, torch.full((shape[0],), t, dtype=torch.long), y)
    return x


def make_mdm(text_encoder_type="clip", dataset="humanml", bert_model_path=None, seed=0, cond_mask_prob=0.1, **kwargs):
    torch.manual_seed(seed)
    arch = "trans_dec" if text_encoder_type == "bert" else "trans_enc"
    clip_dim = 64  # the tiny CLIP's embed_dim (ViT-B/32: 512)
    return MDM("", njoints=4, nfeats=1, num_actions=1, translation=True, pose_rep="rot6d", glob=True,
               glob_rot=[3.14, 0, 0], latent_dim=32, ff_size=64, num_layers=1, num_heads=2, dropout=0.0,
               data_rep="hml_vec", dataset=dataset, clip_dim=clip_dim, arch=arch, clip_version="ViT-B/32",
               cond_mode="text", cond_mask_prob=cond_mask_prob, text_encoder_type=text_encoder_type,
               bert_model_path=bert_model_path, **kwargs)
