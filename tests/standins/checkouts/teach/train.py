"""Stand-in for TEACH's train.py: hydra entry point ``_train`` without version_base (hydra then
changes into its output folder, as in TEACH runs), ``from hydra.utils import instantiate`` inside
``train``, the model path resolved under <original cwd>/deps; two steps on random data."""
import hydra
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="train")
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
        batch = {"text_0": LABELS[:2], "text_1": LABELS[2:], "length_0": [4, 4], "length_1": [5, 5],
                 "features_0": torch.randn(2, 4, 6), "features_1": torch.randn(2, 5, 6)}
        print(f"step {i}: loss {step(model.training_loss(batch), optimizer):.4f}")
    model.dump_checkpoint("last.ckpt")
    model = model.load_from_checkpoint("last.ckpt")  # a new instance, as TEACH's sample_seq.py
    model.eval()
    report(model.textencoder.get_last_hidden_state(LABELS[:1])[0])


if __name__ == "__main__":
    _train()
