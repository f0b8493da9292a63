"""TEACH stand-in, written from the documented interface of athn-nik/teach 54a2a1a.

TEACH's licence forbids redistribution: nothing here is TEACH code, only the same names,
signatures, shapes and rules:
- ``DistilbertEncoderBase(modelpath, finetune=False)`` rewrites ``modelpath`` to
  ``<hydra original cwd>/deps/...`` (the path must contain a ``deps`` component; outside a hydra
  run, set ``ORIGINAL_CWD`` here as one would make ``hydra.utils.get_original_cwd`` return a root;
  inside a hydra run, hydra's own is used),
  reads ``text_model.config.dim`` and offers ``get_last_hidden_state(texts, return_mask=False)``;
- ``TextHist(modelpath, nfeats, hist_frames=1, ...)`` with ``forward(texts, hframes=None, z_pt=None)``
  returning ``Normal`` ``[bs, latent]``;
- ``TEACH`` with ``textencoder``, ``encode_data(data, hframes=None, z_previous=None, *, return_latent)``
  (the text branch only for ``list[str]``), ``forward_seq`` and ``load_from_checkpoint`` (a classmethod
  that builds a NEW instance, as Lightning's does).
"""
from typing import List, Optional

import torch
from torch import nn

from .lightning import LightningModule
from .temos import PositionalEncoding, TinyMotionDecoder

ORIGINAL_CWD: Optional[str] = None  # what hydra.utils.get_original_cwd() would return


def get_original_cwd() -> str:
    """``ORIGINAL_CWD`` when set, else hydra's own (inside a hydra run), as upstream calls it."""
    if ORIGINAL_CWD is not None:
        return ORIGINAL_CWD
    try:
        from hydra.utils import get_original_cwd as hydra_original_cwd
    except ImportError:
        raise ValueError("get_original_cwd() must only be used after HydraConfig is initialized") from None
    return hydra_original_cwd()


def resolve_deps_path(modelpath: str) -> str:
    parts = modelpath.split("/")
    start = parts.index("deps")  # ValueError without a deps component, as upstream
    return get_original_cwd() + "/" + "/".join(parts[start:])


class DistilbertEncoderBase(LightningModule):
    def __init__(self, modelpath: str, finetune: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        modelpath = resolve_deps_path(modelpath)
        self.tokenizer = AutoTokenizer.from_pretrained(modelpath)
        self.text_model = AutoModel.from_pretrained(modelpath)
        if not finetune:
            self.text_model.training = False
            self.text_model.requires_grad_(False)
        self.text_encoded_dim = self.text_model.config.dim  # DistilBERT-style configs only

    def train(self, mode: bool = True):
        self.training = mode
        for child in self.children():
            if not (child is self.text_model and not self.hparams.finetune):
                child.train(mode)
        return self

    def get_last_hidden_state(self, texts: List[str], return_mask: bool = False):
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.text_model.device)
        states = self.text_model(**encoded).last_hidden_state
        return (states, encoded.attention_mask.to(dtype=bool)) if return_mask else states


class TextHist(DistilbertEncoderBase):
    def __init__(self, modelpath: str, nfeats: int, hist_frames: int = 1, finetune: bool = False, vae: bool = True,
                 latent_dim: int = 256, ff_size: int = 1024, num_layers: int = 4, num_heads: int = 4,
                 dropout: float = 0.1, activation: str = "gelu", **kwargs) -> None:
        super().__init__(modelpath=modelpath, finetune=finetune)
        self.save_hyperparameters(logger=False)
        self.projection = nn.Sequential(nn.ReLU(), nn.Linear(self.text_encoded_dim, latent_dim))
        if vae:
            self.mu_token = nn.Parameter(torch.randn(latent_dim))
            self.logvar_token = nn.Parameter(torch.randn(latent_dim))
        else:
            self.emb_token = nn.Parameter(torch.randn(latent_dim))
        self.seperation_token = nn.Parameter(torch.randn(latent_dim))  # upstream spelling
        self.sequence_pos_encoding = PositionalEncoding(latent_dim, dropout)
        make_layer = lambda: nn.TransformerEncoderLayer(latent_dim, num_heads, ff_size, dropout, activation)  # noqa: E731
        self.seqTransEncoder = nn.TransformerEncoder(make_layer(), num_layers, enable_nested_tensor=False)
        self.skel_embedding = nn.Linear(nfeats, latent_dim)
        self.motionTransEncoder = nn.TransformerEncoder(make_layer(), num_layers, enable_nested_tensor=False)
        self.hist_frames = hist_frames

    def forward(self, texts: List[str], hframes: Optional[torch.Tensor] = None, z_pt: Optional[torch.Tensor] = None):
        states, mask = self.get_last_hidden_state(texts, return_mask=True)
        text = self.sequence_pos_encoding(self.projection(states).permute(1, 0, 2))  # [T, bs, latent]
        bs = text.shape[1]
        vae = self.hparams.vae
        head = [self.mu_token, self.logvar_token] if vae else [self.emb_token]
        prefix = [torch.stack(head)[:, None].expand(-1, bs, -1)]
        if hframes is not None:  # past motion frames [bs, frames, nfeats]
            prefix.append(self.seqTransEncoder(self.sequence_pos_encoding(self.skel_embedding(hframes).permute(1, 0, 2))))
        if z_pt is not None and vae:
            prefix.append(z_pt[None])
        prefix.append(self.seperation_token[None, None].expand(1, bs, -1))
        prefix = torch.cat(prefix)
        keep = torch.cat([torch.ones(bs, prefix.shape[0], dtype=torch.bool, device=text.device), mask], 1)
        out = self.seqTransEncoder(torch.cat([prefix, text]), src_key_padding_mask=~keep)
        if vae:
            return torch.distributions.Normal(out[0], out[1].exp().pow(0.5))
        return out[0]


class TEACH(LightningModule):
    def __init__(self, textencoder: dict, nfeats: int = 6, vae: bool = True, latent_dim: int = 16,
                 hist_frames: int = 1, z_prev_text: bool = False, **kwargs):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.textencoder = TextHist(**textencoder, nfeats=nfeats, hist_frames=hist_frames, vae=vae, latent_dim=latent_dim)
        self.motiondecoder = TinyMotionDecoder(latent_dim, nfeats)
        self.hist_frames = hist_frames
        self.previous_latent = z_prev_text
        self.sample_mean = True

    def sample_from_distribution(self, distribution):
        return distribution.loc if self.sample_mean else distribution.rsample()

    def encode_data(self, data, hframes=None, z_previous=None, *, return_latent: bool = False):
        if not isinstance(data[0], str):
            raise NotImplementedError("the stand-in has no motion branch")
        encoded = self.textencoder(data, hframes=hframes, z_pt=z_previous)
        if self.hparams.vae:
            distribution, latent = encoded, self.sample_from_distribution(encoded)
        else:
            distribution, latent = None, encoded
        return (latent, distribution) if return_latent else distribution

    def forward_seq(self, texts: List[str], lengths: List[int]) -> torch.Tensor:
        """Actions one after another, each conditioned on the last frames of the previous one."""
        hframes, prev_z, pieces = None, None, []
        for text, length in zip(texts, lengths):
            z, _ = self.encode_data([text], hframes=hframes, z_previous=prev_z, return_latent=True)
            features = self.motiondecoder(z, [length])[0]
            pieces.append(features)
            if self.hist_frames > 0:
                hframes = features[-self.hist_frames :][None]
            if self.previous_latent:
                prev_z = z
        return torch.cat(pieces)

    def training_loss(self, batch: dict):
        z0, _ = self.encode_data(batch["text_0"], return_latent=True)
        out0 = self.motiondecoder(z0, batch["length_0"])
        hist = out0[:, -self.hist_frames :] if self.hist_frames > 0 else None
        z1, _ = self.encode_data(batch["text_1"], hframes=hist, return_latent=True)
        out1 = self.motiondecoder(z1, batch["length_1"])
        return nn.functional.mse_loss(out0, batch["features_0"]) + nn.functional.mse_loss(out1, batch["features_1"])


def make_teach(modelpath, seed=0, **kwargs) -> TEACH:
    torch.manual_seed(seed)
    textencoder = dict(modelpath=str(modelpath), finetune=False, ff_size=32, num_layers=1, num_heads=2, dropout=0.0)
    return TEACH(textencoder, **kwargs)
