"""A tiny CLIP with OpenAI CLIP's attribute names and ``encode_text`` contract.

``encode_text(text)``: token ids ``[n, 77]`` -> pooled features ``[n, embed_dim]`` taken at the EOT
position (the highest id in each row), projected by ``text_projection``. Causal self-attention,
final ``ln_final``; ``dtype`` follows the visual tower as in CLIP.
"""
import math

import torch
from torch import nn


class TinyVisual(nn.Module):
    def __init__(self, resolution: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(3 * resolution * resolution, embed_dim)

    def forward(self, image):
        return self.proj(image.flatten(1))


class CLIP(nn.Module):
    def __init__(self, embed_dim=64, image_resolution=8, context_length=77, vocab_size=49408,
                 transformer_width=64, transformer_heads=1, transformer_layers=2):
        super().__init__()
        self.context_length = context_length
        self.visual = TinyVisual(image_resolution, embed_dim)
        layer = nn.TransformerEncoderLayer(transformer_width, transformer_heads, 4 * transformer_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, transformer_layers, enable_nested_tensor=False)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, transformer_width) * 0.01)
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.randn(transformer_width, embed_dim) * transformer_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def dtype(self):
        return self.visual.proj.weight.dtype

    def encode_image(self, image):
        return self.visual(image.type(self.dtype))

    def encode_text(self, text):
        x = self.token_embedding(text).type(self.dtype) + self.positional_embedding.type(self.dtype)
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        x = self.ln_final(self.transformer(x, mask=causal, is_causal=True)).type(self.dtype)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        image_features = self.encode_image(image)
        text_features = self.encode_text(text)
        image_features = image_features / image_features.norm(dim=1, keepdim=True)
        text_features = text_features / text_features.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def build_tiny(seed: int = 0, **kwargs) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(**kwargs)


def convert_weights(model: nn.Module):
    """As clip.model.convert_weights: parameters to fp16 (MotionCLIP calls it after loading)."""
    model.half()
