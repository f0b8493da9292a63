"""Stand-in for MoMask's models/mask_transformer/transformer.py: the two text-conditioned transformers."""
from standins.momask import MaskTransformer, ResidualTransformer

__all__ = ["MaskTransformer", "ResidualTransformer"]
