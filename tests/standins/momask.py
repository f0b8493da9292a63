"""MoMask stand-in (interface of EricGuo5513/momask-codes 94a6636, models/mask_transformer/transformer.py).

- ``MaskTransformer(code_dim, cond_mode, latent_dim, ff_size, num_layers, num_heads, dropout, clip_dim,
  cond_drop_prob, clip_version, opt, **kargs)`` and ``ResidualTransformer(code_dim, cond_mode,
  latent_dim, ff_size, num_layers, cond_drop_prob, num_heads, dropout, clip_dim, shared_codebook,
  share_weight, clip_version, opt, **kargs)``: with ``cond_mode='text'`` each loads its own frozen CLIP
  (``clip.load(clip_version, device='cpu', jit=False)``; ``convert_weights`` unless ``opt.device`` is
  cpu) as ``self.clip_model`` and defines ``encode_text(raw_text)``:
  ``clip_model.encode_text(clip.tokenize(raw_text, truncate=True)).float()`` -> [n, D].
- ``encode_text`` is called by ``forward`` (training, under no_grad), ``generate`` and ``edit``
  (``edit`` is left out). The token transformers are small, the masking/sampling schedules reduced.
- ``state_dict_wo_clip`` / ``load_wo_clip``: MoMask's checkpoint rule (``clip_model.*`` never saved;
  loaded with ``strict=False``, asserting only ``clip_model.*`` is missing).
"""
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from . import clip


def lengths_to_mask(lengths, max_len):
    return torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]  # True = real


def _load_and_freeze_clip(clip_version, opt):
    clip_model, _ = clip.load(clip_version, device="cpu", jit=False)
    if str(opt.device) != "cpu":
        clip.model.convert_weights(clip_model)
    clip_model.eval()
    for p in clip_model.parameters():
        p.requires_grad = False
    return clip_model


class _TokenTransformer(nn.Module):
    """The trainable part both MoMask transformers share in shape: tokens + a text condition -> logits."""

    def __init__(self, code_dim, latent_dim, ff_size, num_layers, num_heads, dropout, clip_dim, num_tokens):
        super().__init__()
        self.input_process = nn.Linear(code_dim, latent_dim)
        self.position = nn.Parameter(torch.randn(64, 1, latent_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(latent_dim, num_heads, ff_size, dropout, activation="gelu")
        self.seqTransEncoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.cond_emb = nn.Linear(clip_dim, latent_dim)
        self.output_process = nn.Linear(latent_dim, num_tokens)

    def forward(self, x, cond, padding_mask):
        x = self.input_process(x.permute(1, 0, 2))  # (seqlen, b, latent)
        xseq = torch.cat([self.cond_emb(cond).unsqueeze(0), x + self.position[: x.shape[0]]], dim=0)
        padding_mask = torch.cat([torch.zeros_like(padding_mask[:, :1]), padding_mask], dim=1)
        output = self.seqTransEncoder(xseq, src_key_padding_mask=padding_mask)[1:]
        return self.output_process(output).permute(1, 2, 0)  # (b, ntoken, seqlen)


class MaskTransformer(nn.Module):
    def __init__(self, code_dim, cond_mode, latent_dim=256, ff_size=1024, num_layers=8, num_heads=4, dropout=0.1,
                 clip_dim=512, cond_drop_prob=0.1, clip_version=None, opt=None, **kargs):
        super().__init__()
        self.code_dim, self.latent_dim, self.clip_dim, self.opt = code_dim, latent_dim, clip_dim, opt
        self.cond_mode, self.cond_drop_prob = cond_mode, cond_drop_prob
        self.mask_id, self.pad_id = opt.num_tokens, opt.num_tokens + 1
        self.token_emb = nn.Embedding(opt.num_tokens + 2, code_dim)
        self.trans = _TokenTransformer(code_dim, latent_dim, ff_size, num_layers, num_heads, dropout, clip_dim,
                                       opt.num_tokens)
        if self.cond_mode == "text":
            self.clip_version = clip_version
            self.clip_model = self.load_and_freeze_clip(clip_version)

    def parameters_wo_clip(self):
        return [p for name, p in self.named_parameters() if not name.startswith("clip_model.")]

    def load_and_freeze_clip(self, clip_version):
        return _load_and_freeze_clip(clip_version, self.opt)

    def encode_text(self, raw_text):
        device = next(self.parameters()).device
        text = clip.tokenize(raw_text, truncate=True).to(device)
        return self.clip_model.encode_text(text).float()

    def mask_cond(self, cond, force_mask=False):
        if force_mask:
            return torch.zeros_like(cond)
        if self.training and self.cond_drop_prob > 0.0:
            mask = torch.bernoulli(torch.ones(cond.shape[0], device=cond.device) * self.cond_drop_prob).view(-1, 1)
            return cond * (1.0 - mask)
        return cond

    def trans_forward(self, motion_ids, cond, padding_mask, force_mask=False):
        return self.trans(self.token_emb(motion_ids), self.mask_cond(cond, force_mask), padding_mask)

    def forward(self, ids, y, m_lens):
        """Training: mask some real tokens and predict them; returns (ce_loss, pred_id, acc)."""
        bs, ntokens = ids.shape
        non_pad_mask = lengths_to_mask(m_lens, ntokens)
        ids = torch.where(non_pad_mask, ids, self.pad_id)
        with torch.no_grad():
            cond_vector = self.encode_text(y)
        mask = (torch.rand(bs, ntokens, device=ids.device) < 0.5) & non_pad_mask
        mask[:, 0] |= non_pad_mask[:, 0]  # at least one target per motion
        labels = torch.where(mask, ids, self.mask_id)
        logits = self.trans_forward(torch.where(mask, self.mask_id, ids), cond_vector, ~non_pad_mask)
        ce_loss = F.cross_entropy(logits, labels, ignore_index=self.mask_id)
        pred_id = logits.argmax(1)
        acc = (pred_id == labels)[mask].float().mean()
        return ce_loss, pred_id, acc

    @torch.no_grad()
    def generate(self, conds, m_lens, timesteps: int, cond_scale: int, temperature=1, topk_filter_thres=0.9,
                 gsample=False, force_mask=False):
        seq_len = int(max(m_lens))
        cond_vector = self.encode_text(conds)
        padding_mask = ~lengths_to_mask(m_lens, seq_len)
        ids = torch.where(padding_mask, self.pad_id, self.mask_id)
        for step in range(timesteps):  # unmask a growing share of positions, most confident first
            logits = self.trans_forward(ids, cond_vector, padding_mask)
            aux = self.trans_forward(ids, cond_vector, padding_mask, force_mask=True)
            probs = (aux + (logits - aux) * cond_scale).softmax(1)
            scores, pred = probs.max(1)
            keep = scores.argsort(1, descending=True).argsort(1) < (step + 1) * seq_len // timesteps
            ids = torch.where(keep & ~padding_mask & (ids == self.mask_id), pred, ids)
        return torch.where(padding_mask, -1, ids)


class ResidualTransformer(nn.Module):
    def __init__(self, code_dim, cond_mode, latent_dim=256, ff_size=1024, num_layers=8, cond_drop_prob=0.1,
                 num_heads=4, dropout=0.1, clip_dim=512, shared_codebook=False, share_weight=False,
                 clip_version=None, opt=None, **kargs):
        super().__init__()
        self.code_dim, self.latent_dim, self.clip_dim, self.opt = code_dim, latent_dim, clip_dim, opt
        self.cond_mode, self.cond_drop_prob = cond_mode, cond_drop_prob
        self.pad_id = opt.num_tokens
        self.token_embed_weight = nn.Parameter(torch.randn(opt.num_quantizers - 1, opt.num_tokens + 1, code_dim) * 0.02)
        self.trans = _TokenTransformer(code_dim, latent_dim, ff_size, num_layers, num_heads, dropout, clip_dim,
                                       opt.num_tokens)
        if self.cond_mode == "text":
            self.clip_version = clip_version
            self.clip_model = self.load_and_freeze_clip(clip_version)

    def parameters_wo_clip(self):
        return [p for name, p in self.named_parameters() if not name.startswith("clip_model.")]

    def load_and_freeze_clip(self, clip_version):
        return _load_and_freeze_clip(clip_version, self.opt)

    def encode_text(self, raw_text):
        device = next(self.parameters()).device
        text = clip.tokenize(raw_text, truncate=True).to(device)
        return self.clip_model.encode_text(text).float()

    def mask_cond(self, cond, force_mask=False):
        if force_mask:
            return torch.zeros_like(cond)
        if self.training and self.cond_drop_prob > 0.0:
            mask = torch.bernoulli(torch.ones(cond.shape[0], device=cond.device) * self.cond_drop_prob).view(-1, 1)
            return cond * (1.0 - mask)
        return cond

    def trans_forward(self, history, qids, cond, padding_mask, force_mask=False):
        return self.trans(history, self.mask_cond(cond, force_mask), padding_mask)

    def _history(self, all_indices, q):
        """Summed code embeddings of quantizer layers below ``q``."""
        history = 0
        for layer in range(q):
            history = history + F.embedding(all_indices[..., layer].clamp_min(0), self.token_embed_weight[layer])
        return history

    def forward(self, all_indices, y, m_lens):
        """Training: predict the tokens of a random residual layer from the layers below."""
        bs, ntokens, nq = all_indices.shape
        non_pad_mask = lengths_to_mask(m_lens, ntokens)
        q = int(torch.randint(1, nq, ()))
        with torch.no_grad():
            cond_vector = self.encode_text(y)
        logits = self.trans_forward(self._history(all_indices, q), q, cond_vector, ~non_pad_mask)
        labels = torch.where(non_pad_mask, all_indices[..., q], -100)
        ce_loss = F.cross_entropy(logits, labels, ignore_index=-100)
        pred_id = logits.argmax(1)
        acc = (pred_id == labels)[non_pad_mask].float().mean()
        return ce_loss, pred_id, acc

    @torch.no_grad()
    def generate(self, motion_ids, conds, m_lens, temperature=1, topk_filter_thres=0.9, cond_scale=2):
        seq_len = motion_ids.shape[1]
        cond_vector = self.encode_text(conds)
        padding_mask = ~lengths_to_mask(m_lens, seq_len)
        all_indices = [motion_ids]
        for q in range(1, self.opt.num_quantizers):
            stacked = torch.stack(all_indices, dim=-1)
            logits = self.trans_forward(self._history(stacked, q), q, cond_vector, padding_mask)
            aux = self.trans_forward(self._history(stacked, q), q, cond_vector, padding_mask, force_mask=True)
            all_indices.append(torch.where(padding_mask, -1, (aux + (logits - aux) * cond_scale).argmax(1)))
        return torch.stack(all_indices, dim=-1)


def state_dict_wo_clip(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("clip_model.")}


def load_wo_clip(model, state_dict):
    missing_keys, unexpected_keys = model.load_state_dict(state_dict, strict=False)
    assert len(unexpected_keys) == 0
    assert all(k.startswith("clip_model.") for k in missing_keys)


def make_momask(seed=0, num_tokens=16, num_quantizers=3, device="cpu"):
    """A (MaskTransformer, ResidualTransformer) pair as gen_t2m.py loads them (tiny CLIP: clip_dim 64)."""
    opt = SimpleNamespace(num_tokens=num_tokens, num_quantizers=num_quantizers, device=device)
    small = dict(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, dropout=0.0, clip_dim=64, cond_drop_prob=0.1,
                 clip_version="ViT-B/32", opt=opt)
    torch.manual_seed(seed)
    t2m = MaskTransformer(code_dim=16, cond_mode="text", **small)
    res = ResidualTransformer(code_dim=16, cond_mode="text", shared_codebook=False, share_weight=False, **small)
    return t2m, res
