"""The adapter interface: how ActionGPT takes over one codebase's text encoder.

An adapter class is registered by a plugin (``register_adapters`` hook) and says whether it fits a
model (``matches``). An instance, built with the model and its ActionGPT, offers:

- ``text_encoder``: a drop-in for the model's own text encoder (same call signature, output
  types and shapes) that expands phrases, embeds the descriptions with the ORIGINAL frozen text
  model and aggregates them (``ActionGPT.embed`` does the expansion, caching and aggregation);
- ``install()`` / ``uninstall()``: put that drop-in into the model in place and take it out,
  adding no parameters, buffers or submodules (``state_dict`` keys never change, so checkpoints
  load both ways between wrapped and upstream models);
- ``embedding_source()``: what ``prepare`` needs to embed a vocabulary ahead of training;
- ``register_phrases(labels)``: called with the labels given to ``expand``/``prepare``, for
  adapters that see something other than the label at call time (MotionCLIP sees CLIP tokens).

Later codebases (MDM, T2M-GPT, MoMask) follow the same pattern: find the call site that receives
strings or tokens, keep the original, replace it reversibly, never add modules.
"""
from __future__ import annotations

from ..errors import ActionGPTError


class Adapter:
    name: str = ""
    granularity: str = "tokens"  # "tokens" ([n, T, H] + bool mask) or "pooled" ([n, D])
    priority: int = 0  # when several adapters match, the highest wins

    def __init__(self, model, ag):
        self.model = model
        self.ag = ag
        self.installed = False

    @classmethod
    def matches(cls, model) -> bool:
        raise NotImplementedError

    @property
    def text_encoder(self):
        raise NotImplementedError

    def install(self) -> None:
        raise NotImplementedError

    def uninstall(self) -> None:
        raise NotImplementedError

    def embedding_source(self):
        """(encode, text_model, tag): encode(list[str]) runs the original text model on descriptions."""
        raise NotImplementedError

    def register_phrases(self, phrases) -> None:
        pass

    def prepare(self, phrases, batch_size: int) -> None:
        encode, text_model, tag = self.embedding_source()
        for start in range(0, len(phrases), batch_size):
            self.ag.embed(phrases[start : start + batch_size], encode, text_model, tag)


class MethodDropIn:
    """An instance attribute standing in for a text-encoding method of ``owner`` while installed.

    Calls ``adapter.encode_for(owner, ...)``; once the adapter is uninstalled, a copy left behind
    calls the original method. ``copy.deepcopy`` of the owner (MDM's EMA copy) gives the copy its own
    drop-in sharing the same ActionGPT; pickling stores the upstream bound method instead.
    """

    def __init__(self, adapter, owner, method: str):
        self.adapter, self.owner, self.method = adapter, owner, method

    def original(self):
        return getattr(type(self.owner), self.method).__get__(self.owner)

    def __call__(self, *args, **kwargs):
        if not self.adapter.installed:
            return self.original()(*args, **kwargs)
        return self.adapter.encode_for(self.owner, *args, **kwargs)

    def __deepcopy__(self, memo):
        return MethodDropIn(self.adapter, memo.get(id(self.owner), self.owner), self.method)

    def __reduce_ex__(self, protocol):
        return getattr, (self.owner, self.method)


def defining_class(obj_type: type, class_name: str, method: str, package: str):
    """The class named ``class_name`` in ``obj_type``'s MRO that defines ``method`` and lives under ``package``.

    Upstream codebases are not importable here (and TEACH must never be vendored), so classes are
    recognised by name and by a module path containing the codebase's package (``temos.model...``).
    """
    for cls in obj_type.__mro__:
        if cls.__name__ == class_name and method in vars(cls) and package in cls.__module__.split("."):
            return cls
    return None


def find_adapter(model, adapters, name=None):
    """The adapter class for ``model`` among the registered ``adapters`` (or the one named ``name``)."""
    names = ", ".join(sorted(a.name for a in adapters)) or "(none registered)"
    if name is not None:
        if isinstance(name, type):
            return name
        for adapter in adapters:
            if adapter.name == name:
                return adapter
        raise ActionGPTError(f"unknown adapter {name!r}; valid choices: {names}")
    fitting = [a for a in adapters if a.matches(model)]
    if not fitting:
        raise ActionGPTError(f"no adapter matches a {type(model).__name__} model; registered adapters: {names}")
    return max(fitting, key=lambda a: a.priority)
