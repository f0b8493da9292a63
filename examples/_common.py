"""Shared set-up of the adapter examples: the stand-in models and a small description pack.

The upstream codebases are not installed here, so the examples drive the stand-ins in
tests/standins (same class names, signatures and shapes as upstream) with tiny random text
models. docs/temos.md, docs/teach.md and docs/motionclip.md show the same calls on the real code.
"""
import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# Four descriptions per label, in the release's gpt3_annotations.json format (label -> list).
ANNOTATIONS = {
    "jump": [
        "a person bends both knees and jumps up into the air",
        "the person crouches then jumps up with both arms raised",
        "he jumps up",
        "a person bends down and then jumps up and lands on both feet",
    ],
    "walk forward": [
        "a person walks forward slowly",
        "the person steps forward with the left leg then the right leg",
        "she walks forward and the arms swing",
        "a person walks forward with both hands down",
    ],
    "wave": [
        "a person raises the right arm and waves the hand",
        "the person lifts the right hand up and waves it left and right",
        "he waves",
        "a person raises one arm up and waves twice",
    ],
    "sit down": [
        "a person bends both knees and sits down",
        "the person sits down slowly",
        "she bends the knees and the body goes down",
        "a person turns around and sits down on the ground",
    ],
}


def arguments(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", default="pack",
                        help="pack (the descriptions above, default), embedded (SmolLM2, slow), openai, ...")
    parser.add_argument("--aggregator", default="paper", help="paper, masked-mean, pooled-mean, norm-mean, concat")
    parser.add_argument("--steps", type=int, default=3)
    return parser.parse_args()


@contextmanager
def workdir(prefix):
    """A temporary directory holding the description pack (and the store, models, checkpoints)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        (work / "gpt3_annotations.json").write_text(json.dumps(ANNOTATIONS))
        yield work


def actiongpt_config(args, work):
    """Config keys for ActionGPT: the pack above, a private store, strict during training."""
    return {
        "backend": args.backend,
        "pack.path": str(work / "gpt3_annotations.json"),
        "store.path": str(work / "store.sqlite"),
        "embedding.aggregator": args.aggregator,
        "embedding.on_missing": "strict",  # training never calls an LLM: everything was prepared
    }
