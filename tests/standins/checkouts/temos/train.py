"""Stand-in for TEMOS's train.py: the same hydra entry point (``_train``, configs/ beside it) and the
same ``from hydra.utils import instantiate`` inside ``train``; two steps on random data."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="configs", config_name="train")
def _train(cfg: DictConfig):
    return train(cfg)


def train(cfg: DictConfig) -> None:
    import torch
    from hydra.utils import instantiate

    from standins.checkouts import LABELS, report, step

    model = instantiate(cfg.model, _recursive_=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for i in range(cfg.steps):
        batch = {"text": LABELS[:2], "length": [6, 5], "features": torch.randn(2, 6, 6)}
        print(f"step {i}: loss {step(model.training_loss(batch), optimizer):.4f}")
    model.eval()
    report(model.textencoder.get_last_hidden_state(LABELS[:1])[0])


if __name__ == "__main__":
    _train()
