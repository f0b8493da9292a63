"""A counting backend registered the way a third-party plugin would (hookimpl + register_backends)."""
import asyncio
import threading

from actiongpt_plugin import hookimpl
from actiongpt_plugin.backends.base import Backend, Completion
from actiongpt_plugin.errors import FatalBackendError


class ScriptedBackend(Backend):
    """Answers with numbered descriptions; `script` maps a phrase to a list of per-call answers."""

    name = "scripted"
    model = "scripted-v1"
    batch_size = 1
    concurrency = 8

    def __init__(self):
        self.calls = []  # (phrase, n)
        self.script = {}
        self.fatal = False
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request, k, params):
        with self.lock:
            self.calls.append((request.phrase, k))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.fatal:
                raise FatalBackendError("invalid API key")
            answers = self.script.get(request.phrase)
            if answers:
                texts = answers.pop(0)
            else:
                n = len([c for c in self.calls if c[0] == request.phrase])
                texts = [f"The person moves to {request.phrase}, variant {n}.{i}." for i in range(k)]
            return Completion(texts=list(texts), raw={"n": k}, prompt_tokens=10, completion_tokens=5 * k)
        finally:
            with self.lock:
                self.in_flight -= 1


class ScriptedPlugin:
    def __init__(self):
        self.backend = ScriptedBackend()

    @hookimpl
    def register_backends(self, register):
        register("scripted", lambda cfg: self.backend)
