"""TEMOS stand-in (interface of Mathux/TEMOS eafa06d, MIT): the text path and a tiny motion decoder.

Names, signatures and shapes as upstream: ``DistilbertEncoderBase(modelpath, finetune=False)`` with
``tokenizer``, ``text_model``, ``text_encoded_dim`` and ``get_last_hidden_state(texts,
return_mask=False)`` -> ``[bs, T, H]`` (+ bool mask ``[bs, T]``);
``DistilbertActorAgnosticEncoder(modelpath, finetune, vae, latent_dim, ff_size, num_layers,
num_heads, dropout, activation)`` whose ``forward(texts)`` returns ``Normal`` ``[bs, latent]``;
``TEMOS`` with ``textencoder`` and ``text_to_motion_forward(text_sentences, lengths, *, return_latent)``.
"""
import math
from typing import List, Optional

import torch
from torch import nn

from .lightning import LightningModule


class DistilbertEncoderBase(LightningModule):
    def __init__(self, modelpath: str, finetune: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer, logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(modelpath)
        self.text_model = AutoModel.from_pretrained(modelpath)
        if not finetune:  # frozen: never trained, kept out of train mode
            self.text_model.training = False
            self.text_model.requires_grad_(False)
        self.text_encoded_dim = self.text_model.config.hidden_size

    def train(self, mode: bool = True):
        self.training = mode
        for child in self.children():
            if child is self.text_model and not self.hparams.finetune:
                continue
            child.train(mode)
        return self

    def get_last_hidden_state(self, texts: List[str], return_mask: bool = False):
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.text_model.device)
        states = self.text_model(**encoded).last_hidden_state
        if return_mask:
            return states, encoded.attention_mask.to(dtype=bool)
        return states


class PositionalEncoding(nn.Module):
    """Sinusoidal positions for sequence-first input [T, bs, D]."""

    def __init__(self, d_model, dropout=0.1, max_len=512):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, 1, d_model)
        table[:, 0, 0::2] = torch.sin(position * freq)
        table[:, 0, 1::2] = torch.cos(position * freq)
        self.register_buffer("pe", table)

    def forward(self, x):
        return self.dropout(x + self.pe[: x.shape[0]])


class DistilbertActorAgnosticEncoder(DistilbertEncoderBase):
    def __init__(self, modelpath: str, finetune: bool = False, vae: bool = True, latent_dim: int = 256,
                 ff_size: int = 1024, num_layers: int = 4, num_heads: int = 4, dropout: float = 0.1,
                 activation: str = "gelu", **kwargs) -> None:
        super().__init__(modelpath=modelpath, finetune=finetune)
        self.save_hyperparameters(logger=False)
        self.projection = nn.Sequential(nn.ReLU(), nn.Linear(self.text_encoded_dim, latent_dim))
        if vae:
            self.mu_token = nn.Parameter(torch.randn(latent_dim))
            self.logvar_token = nn.Parameter(torch.randn(latent_dim))
        else:
            self.emb_token = nn.Parameter(torch.randn(latent_dim))
        self.sequence_pos_encoding = PositionalEncoding(latent_dim, dropout)
        layer = nn.TransformerEncoderLayer(latent_dim, num_heads, ff_size, dropout, activation)
        self.seqTransEncoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, texts: List[str]):
        states, mask = self.get_last_hidden_state(texts, return_mask=True)
        x = self.projection(states).permute(1, 0, 2)  # [T, bs, latent]
        bs = x.shape[1]
        tokens = [self.mu_token, self.logvar_token] if self.hparams.vae else [self.emb_token]
        extra = torch.stack(tokens)[:, None].expand(-1, bs, -1)
        seq = self.sequence_pos_encoding(torch.cat([extra, x]))
        keep = torch.cat([torch.ones(bs, len(tokens), dtype=torch.bool, device=x.device), mask], 1)
        out = self.seqTransEncoder(seq, src_key_padding_mask=~keep)
        if self.hparams.vae:
            return torch.distributions.Normal(out[0], out[1].exp().pow(0.5))
        return out[0]


class TinyMotionDecoder(nn.Module):
    """Stands for TEMOS's ACTOR-style decoder: latent [bs, latent] -> features [bs, max(lengths), nfeats]."""

    def __init__(self, latent_dim, nfeats):
        super().__init__()
        self.out = nn.Linear(latent_dim, nfeats)
        self.time = nn.Parameter(torch.randn(64, nfeats) * 0.1)

    def forward(self, z, lengths):
        steps = max(lengths)
        return self.out(z)[:, None] + self.time[:steps][None]


class TEMOS(LightningModule):
    def __init__(self, textencoder: dict, nfeats: int = 6, vae: bool = True, latent_dim: int = 16, **kwargs):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.textencoder = DistilbertActorAgnosticEncoder(**textencoder, vae=vae, latent_dim=latent_dim)
        self.motiondecoder = TinyMotionDecoder(latent_dim, nfeats)
        self.sample_mean = False
        self.fact = None

    def sample_from_distribution(self, distribution, *, fact: Optional[float] = None, sample_mean=False):
        fact = fact if fact is not None else self.fact
        if sample_mean or self.sample_mean:
            return distribution.loc
        if fact is None:
            return distribution.rsample()
        return distribution.loc + fact * (distribution.rsample() - distribution.loc)

    def text_to_motion_forward(self, text_sentences: List[str], lengths: List[int], *, return_latent: bool = False):
        if self.hparams.vae:
            distribution = self.textencoder(text_sentences)
            latent = self.sample_from_distribution(distribution)
        else:
            distribution = None
            latent = self.textencoder(text_sentences)
        features = self.motiondecoder(latent, lengths)
        return (features, latent, distribution) if return_latent else features

    def forward(self, batch: dict) -> List[torch.Tensor]:
        features = self.text_to_motion_forward(batch["text"], batch["length"])
        return [f[:n] for f, n in zip(features, batch["length"])]

    def training_loss(self, batch: dict):
        """Reconstruction + KL, as a TEMOS training step would compute for the text branch."""
        features, _, distribution = self.text_to_motion_forward(batch["text"], batch["length"], return_latent=True)
        target = batch["features"][:, : features.shape[1]]
        loss = nn.functional.mse_loss(features, target)
        if distribution is not None:
            ref = torch.distributions.Normal(torch.zeros_like(distribution.loc), torch.ones_like(distribution.scale))
            loss = loss + 1e-3 * torch.distributions.kl_divergence(distribution, ref).mean()
        return loss


def make_temos(modelpath, seed=0, **kwargs) -> TEMOS:
    torch.manual_seed(seed)
    textencoder = dict(modelpath=str(modelpath), finetune=False, ff_size=32, num_layers=1, num_heads=2, dropout=0.0)
    return TEMOS(textencoder, **kwargs)
