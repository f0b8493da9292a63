"""Named, versioned prompt templates (a built-in plugin).

A template renders a phrase into a Prompt that carries both forms: ``text`` for legacy
completions / raw causal LMs and ``messages`` for chat APIs and chat templates.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .hookspecs import hookimpl


@dataclass(frozen=True)
class Prompt:
    text: str
    messages: tuple = ()  # ({"role": ..., "content": ...}, ...)

    def as_messages(self) -> list[dict]:
        return [dict(m) for m in self.messages] or [{"role": "user", "content": self.text}]


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    text: str  # contains "{phrase}"
    system: str = ""
    examples: tuple = ()  # ((phrase, answer), ...) rendered as worked examples
    description: str = ""
    max_words: int | None = None  # caption-style budget, enforced by cleaning

    def render(self, phrase: str) -> Prompt:
        user = self.text.replace("{phrase}", phrase)
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        for ex_phrase, ex_answer in self.examples:
            messages.append({"role": "user", "content": self.text.replace("{phrase}", ex_phrase)})
            messages.append({"role": "assistant", "content": ex_answer})
        messages.append({"role": "user", "content": user})
        if not self.system and not self.examples:
            return Prompt(text=user, messages=tuple(messages))
        # Completion-style rendering of the same few-shot conversation.
        parts = [self.system] if self.system else []
        parts += [f"{self.text.replace('{phrase}', p)}\n{a}" for p, a in self.examples]
        parts.append(user)
        return Prompt(text="\n\n".join(parts) + "\n", messages=tuple(messages))

    @property
    def fingerprint(self) -> str:
        """Identity of everything that shapes the prompt, for cache keys."""
        blob = "\x1f".join([self.name, str(self.version), self.text, self.system, repr(self.examples), str(self.max_words)])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The release's exact prompt, grammar kept verbatim for reproduction (gpt_annotator.py).
RELEASE = Template(
    name="actiongpt",
    version="1",
    text="Describe a person's body movements who is performing the action {phrase} in details",
    description="The Action-GPT release's exact prompt (text-davinci-002, k=4).",
)

IN_DETAIL = Template(
    name="actiongpt-in-detail",
    version="1",
    text="Describe a person's body movements who is performing the action {phrase} in detail",
    description="The paper figure's wording ('in detail').",
)

BODY_PARTS = Template(
    name="body-parts",
    version="1",
    text=(
        "A person is performing the action {phrase}. Describe the movement of their body in three short "
        "sentences: first the torso, then the arms and hands, then the legs and feet."
    ),
    system="Describe only physical body movements. No names, no stories, no emotions.",
    description="Torso / arms / legs descriptions (as in GAP and MoRAG).",
)

CAPTION = Template(
    name="caption",
    version="1",
    text="Write one short caption (at most 15 words) describing how a person's body moves when they {phrase}.",
    system=(
        "You write motion-capture captions like 'a person raises both arms and jumps forward'. "
        "One sentence, present tense, third person, body movement only."
    ),
    examples=(("wave", "a person lifts the right arm and swings the hand from side to side."),),
    description="Short caption-style text for frozen checkpoints trained on HumanML3D-like captions.",
    max_words=20,
)

FEW_SHOT = Template(
    name="few-shot",
    version="1",
    text="Describe a person's body movements when performing the action: {phrase}",
    system=(
        "You describe only physical body movements of a person in 1-3 sentences. "
        "No names, no stories, no dialogue, no emotions."
    ),
    examples=(
        (
            "kick",
            "The person shifts weight onto the left leg, bends the right knee, then swings the right leg "
            "forward and extends it sharply before setting the foot back down.",
        ),
        (
            "wave",
            "The person raises the right arm to shoulder height with the elbow bent and moves the open hand "
            "from side to side several times.",
        ),
    ),
    description="Keeps small local models (SmolLM2) on topic with a system line and worked examples.",
)

BUILTIN_TEMPLATES = (RELEASE, IN_DETAIL, BODY_PARTS, CAPTION, FEW_SHOT)


@hookimpl
def register_templates(register):
    for template in BUILTIN_TEMPLATES:
        register(template)


@hookimpl(trylast=True)
def build_prompt(template, phrase, config):
    return template.render(phrase)
