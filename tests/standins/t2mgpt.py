"""T2M-GPT stand-in (interface of Mael-zys/T2M-GPT b1446f1, Apache-2.0).

- ``Text2Motion_Transformer(num_vq, embed_dim, clip_dim, block_size, num_layers, n_head,
  drop_out_rate, fc_rate)``: ``forward(idxs, clip_feature)`` -> logits [bs, t+1, num_vq+1] (the CLIP
  feature is the first position; ``idxs`` may be empty), ``sample(clip_feature, if_categorial)`` ->
  motion-token indices [1, t], stopping at the end token ``num_vq``. A small causal transformer.
- ``train_t2m_trans`` / ``eval_t2m_trans``: the text path of T2M-GPT's scripts, in their order and with
  their calls: ``import clip``; a script-level ``clip.load("ViT-B/32", jit=False)``,
  ``clip.model.convert_weights``, ``eval()``, frozen; per batch
  ``clip_model.encode_text(clip.tokenize(clip_text, truncate=True)).float()`` into the transformer.
  They import ``clip`` as the scripts do, so tests put the CLIP stand-in in ``sys.modules['clip']``.
"""
import torch
from torch import nn
from torch.distributions import Categorical
from torch.nn import functional as F


class Text2Motion_Transformer(nn.Module):  # noqa: N801 - upstream name
    def __init__(self, num_vq=1024, embed_dim=512, clip_dim=512, block_size=16, num_layers=2, n_head=8,
                 drop_out_rate=0.1, fc_rate=4):
        super().__init__()
        self.num_vq, self.block_size = num_vq, block_size
        self.tok_emb = nn.Embedding(num_vq + 2, embed_dim)
        self.cond_emb = nn.Linear(clip_dim, embed_dim)
        self.pos_emb = nn.Parameter(torch.randn(block_size, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, n_head, fc_rate * embed_dim, drop_out_rate, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(embed_dim, num_vq + 1)

    def get_block_size(self):
        return self.block_size

    def forward(self, idxs, clip_feature):
        x = self.cond_emb(clip_feature).unsqueeze(1)
        if len(idxs):
            assert idxs.shape[1] < self.block_size, "Cannot forward, model block size is exhausted."
            x = torch.cat([x, self.tok_emb(idxs)], dim=1)
        x = x + self.pos_emb[: x.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        return self.head(self.blocks(x, mask=causal, is_causal=True))

    def sample(self, clip_feature, if_categorial=False):
        xs = torch.zeros(clip_feature.shape[0], 0, dtype=torch.long, device=clip_feature.device)
        for _ in range(self.block_size - 1):
            probs = F.softmax(self.forward(xs if xs.shape[1] else [], clip_feature)[:, -1], dim=-1)
            idx = Categorical(probs).sample() if if_categorial else probs.argmax(-1)
            if idx[0] == self.num_vq:  # end token
                break
            xs = torch.cat([xs, idx[:, None]], dim=1)
        return xs


def _script_clip():
    import clip  # what T2M-GPT's scripts do (module global)

    clip_model, clip_preprocess = clip.load("ViT-B/32", device="cpu", jit=False)
    clip.model.convert_weights(clip_model)
    clip_model.eval()
    for p in clip_model.parameters():
        p.requires_grad = False
    return clip, clip_model


def train_t2m_trans(trans_encoder, batches, lr=1e-3):
    """train_t2m_trans.py's loop, reduced: ``batches`` of (clip_text, m_tokens [bs, t+1])."""
    clip, clip_model = _script_clip()
    optimizer = torch.optim.AdamW(trans_encoder.parameters(), lr=lr)
    features, losses = [], []
    for clip_text, m_tokens in batches:
        text = clip.tokenize(clip_text, truncate=True)
        feat_clip_text = clip_model.encode_text(text).float()
        cls_pred = trans_encoder(m_tokens[:, :-1], feat_clip_text)
        loss = F.cross_entropy(cls_pred.reshape(-1, cls_pred.shape[-1]), m_tokens.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        features.append(feat_clip_text)
        losses.append(loss.item())
    return {"clip_model": clip_model, "features": features, "losses": losses}


def eval_t2m_trans(trans, clip_text):
    """utils/eval_trans.py's text path: features for the batch, then ``sample`` one text at a time."""
    clip, clip_model = _script_clip()
    feat_clip_text = clip_model.encode_text(clip.tokenize(clip_text, truncate=True)).float()
    motions = [trans.sample(feat_clip_text[k : k + 1], False) for k in range(len(clip_text))]
    return {"clip_model": clip_model, "features": feat_clip_text, "motions": motions}


def make_transformer(seed=0, clip_dim=64, num_vq=16):
    torch.manual_seed(seed)
    return Text2Motion_Transformer(num_vq=num_vq, embed_dim=32, clip_dim=clip_dim, block_size=8, num_layers=1,
                                   n_head=2, drop_out_rate=0.0, fc_rate=2)
