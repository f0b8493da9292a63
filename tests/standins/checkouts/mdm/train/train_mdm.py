"""Stand-in for MDM's train/train_mdm.py: imports ``create_model_and_diffusion`` by name, trains two steps."""
import argparse

import torch

from standins.checkouts import LABELS, report, step
from utils.model_util import create_model_and_diffusion

parser = argparse.ArgumentParser()
parser.add_argument("--save_dir", default="save")
args = parser.parse_args()
model, diffusion = create_model_and_diffusion(args, None)
optimizer = torch.optim.AdamW(model.parameters_wo_clip(), lr=1e-4)
model.train()
for i in range(2):
    x = torch.randn(2, 4, 1, 6)
    y = {"text": LABELS[:2]}
    loss = torch.nn.functional.mse_loss(model(x, torch.zeros(2, dtype=torch.long), y), x)
    print(f"step {i}: loss {step(loss, optimizer):.4f}")
report(model.encode_text(LABELS[:1])[0])
