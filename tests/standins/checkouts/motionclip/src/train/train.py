"""Stand-in for MotionCLIP's src/train/train.py: imports ``get_model_and_data`` by name and trains in
``__main__`` (two steps on random motion; the CLIP text features are the cosine-loss target)."""
import argparse
import sys

import torch

sys.path.append(".")

from src.utils.get_model_and_data import get_model_and_data  # noqa: E402
from standins.checkouts import LABELS, report, step  # noqa: E402
from standins.motionclip import text_to_clip_features  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default="exps/run")
    parameters = vars(parser.parse_args())
    model, datasets = get_model_and_data(parameters)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for i in range(2):
        batch = {"x": torch.randn(2, 4, 6, 10), "mask": torch.ones(2, 10, dtype=torch.bool), "clip_text": LABELS[:2]}
        model(batch)
        print(f"step {i}: loss {step(model.compute_loss(batch)[0], optimizer):.4f}")
    report(text_to_clip_features(model, LABELS[:1])[0])
