"""Stand-in for MoMask's train_t2m_transformer.py: builds the transformer in ``__main__``, trains two steps."""
import torch

from standins.checkouts import LABELS, report, step
from standins.momask import make_momask

if __name__ == "__main__":
    t2m, _ = make_momask()  # constructed through models.mask_transformer.transformer's classes
    optimizer = torch.optim.AdamW(t2m.parameters_wo_clip(), lr=1e-4)
    t2m.train()
    for i in range(2):
        loss, _, _ = t2m(torch.randint(0, 16, (2, 6)), LABELS[:2], torch.tensor([6, 4]))
        print(f"step {i}: loss {step(loss, optimizer):.4f}")
    t2m.eval()
    report(t2m.encode_text(LABELS[:1])[0])
