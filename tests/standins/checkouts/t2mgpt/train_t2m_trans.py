"""Stand-in for T2M-GPT's train_t2m_trans.py: a script-level ``clip.load`` CLIP, texts from a file,
``clip_model.encode_text(clip.tokenize(...)).float()`` into the transformer; two steps."""
import torch

from standins.checkouts import LABELS, report
from standins.t2mgpt import make_transformer, train_t2m_trans

texts = [line.strip() for line in open("texts.txt") if line.strip()]
batches = [(texts[:2], torch.randint(0, 16, (2, 5))) for _ in range(2)]
result = train_t2m_trans(make_transformer(), batches)
for i, loss in enumerate(result["losses"]):
    print(f"step {i}: loss {loss:.4f}")
report(result["features"][0][texts.index(LABELS[0])])
