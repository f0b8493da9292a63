"""Stand-in upstream checkouts: the file layout and entry points the docs' launchers rely on.

Each folder is laid out like the upstream repository root (TEMOS/TEACH: ``train.py`` with its hydra
entry point and ``configs/``; MotionCLIP: ``src/utils/get_model_and_data.py`` and
``src/train/train.py``; MDM: ``utils/model_util.py`` and ``train/train_mdm.py``; T2M-GPT:
``train_t2m_trans.py`` and a module-level ``clip``; MoMask: ``models/mask_transformer/transformer.py``
and ``train_t2m_transformer.py``). The scripts drive the stand-in models for a few steps and end with
``report(...)``: one line with the text features the model used for the first label, which
tests/test_docs_launchers.py checks against a hand computation. No upstream code is copied.
"""
LABELS = ["jump", "walk forward", "wave", "sit down"]


def report(features) -> None:
    """Print the text features of LABELS[0] the way the docs tests read them back."""
    flat = features.detach().float().reshape(-1)
    print(f"features[{LABELS[0]}]: {features.shape[0] if features.dim() > 1 else 1} " +
          " ".join(f"{v:.6f}" for v in flat[:6].tolist()))


def step(loss, optimizer) -> float:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()
