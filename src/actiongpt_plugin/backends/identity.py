"""`identity`: the phrase itself k times — the no-LLM baseline (equivalent to the unmodified model)."""
from ..hookspecs import hookimpl
from .base import Backend, Completion


class IdentityBackend(Backend):
    name = "identity"
    model = "identity"
    batch_size = 1024
    paid = False  # nothing to cache

    async def complete(self, request, k, params):
        return Completion(texts=[request.phrase] * k, requests=0)


@hookimpl
def register_backends(register):
    register("identity", lambda cfg: IdentityBackend(), description="the phrase itself: the no-LLM baseline")
