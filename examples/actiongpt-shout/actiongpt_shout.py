"""A third-party backend with its own options (see docs/writing-a-plugin.md).

It stands for a paid API: it needs a key (SHOUT_API_KEY, or `--set shout.api_key=...` in a config
file), and has options of its own with defaults, all set like any built-in key:

    SHOUT_API_KEY=... actiongpt expand jump --backend shout --set shout.style=loud --set shout.repeat=2

Install it with `pip install -e examples/actiongpt-shout`; `actiongpt config show` then has a
`shout:` section (the key masked) and `actiongpt config docs` documents it.
"""
import os
from dataclasses import dataclass
from typing import Optional

from actiongpt_plugin import hookimpl
from actiongpt_plugin.backends.base import Backend, Completion
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.options import option

KEY_ENV = "SHOUT_API_KEY"


@dataclass
class ShoutOptions:
    """the shout example backend"""

    api_key: Optional[str] = option(None, f"else {KEY_ENV}", secret=True)
    style: str = option("calm", "how the descriptions are written", choices=("calm", "loud"))
    repeat: int = option(1, "times each movement is repeated", low=1, high=5)


class ShoutBackend(Backend):
    name = "shout"
    model = "shout-1"
    concurrency = 8

    def __init__(self, config):
        options = config.shout
        self.key = options.api_key or os.environ.get(KEY_ENV)
        if not self.key:
            raise ActionGPTError(f"the shout backend needs an API key: set {KEY_ENV} or shout.api_key")
        self.style, self.repeat = options.style, options.repeat

    def identity(self) -> dict:
        # Options that change the answers belong in the store key; the key never does.
        return {"model": self.model, "style": self.style, "repeat": self.repeat}

    async def complete(self, request, k, params):
        move = ", ".join(["the person bends the knees and swings both arms"] * self.repeat)
        texts = [f"{move} to {request.phrase} (take {i + 1})." for i in range(k)]
        if self.style == "loud":
            texts = [t.upper() for t in texts]
        else:
            texts = [t[0].upper() + t[1:] for t in texts]
        return Completion(texts=texts, raw={"style": self.style}, prompt_tokens=len(request.prompt.text.split()))


@hookimpl
def register_backends(register):
    register("shout", ShoutBackend, options=ShoutOptions, needs_key=True, key_env=KEY_ENV, auto=5,
             description="example API-style backend with options")
