"""The adapter interface: how ActionGPT takes over one codebase's text encoder.

An adapter class is registered by a plugin (``register_adapters`` hook) and says whether it fits a
model (``matches``). An instance, built with the model and its ActionGPT:

- ``bind()``: derives what it needs from the model (the text encoder, the tokenizer tag, ...);
- ``declare()``: DECLARES what it replaces, as a list of ``Replacement`` objects: an instance
  attribute (``InstanceAttribute``: TEMOS, MDM, MoMask), a class attribute (``ClassAttribute``:
  TEACH, whose ``load_from_checkpoint`` builds new instances), an attribute proxy (``Proxy``:
  MotionCLIP's and T2M-GPT's ``clip_model``) or a module function (``ModuleAttribute``: T2M-GPT's
  ``clip.load``);
- ``text_encoder``: a drop-in for the model's own text encoder (same call signature, output types
  and shapes) that expands phrases, embeds the descriptions with the ORIGINAL frozen text model and
  aggregates them (``ActionGPT.embed`` does the expansion, caching and aggregation);
- ``embedding_source()``: what ``prepare`` needs to embed a vocabulary ahead of training;
- ``register_phrases(labels)``: called with the labels given to ``expand``/``prepare``, for
  adapters that see something other than the label at call time (MotionCLIP sees CLIP tokens).

This base class does the rest, once for every adapter: the "already replaced" guard, ``install`` /
``uninstall`` (adding no parameters, buffers or submodules: ``state_dict`` keys never change), and
what happens when an installed model is copied:

- ``copy.deepcopy`` (an EMA copy) gives the copy its own drop-ins sharing the same ActionGPT;
- pickling (``torch.multiprocessing.spawn``, Lightning ``ddp_spawn``) carries the ActionGPT along
  (see ``ActionGPT.__getstate__``): the adapter travels with its portable state only, re-derives the
  rest from the unpickled model on first use (``bind``), and re-installs its class and module
  replacements in the new process (unless that process already has them replaced).
"""
from __future__ import annotations

import functools
import importlib

from ..errors import ActionGPTError


class Adapter:
    name: str = ""
    granularity: str = "tokens"  # "tokens" ([n, T, H] + bool mask) or "pooled" ([n, D])
    priority: int = 0  # when several adapters match, the highest wins
    portable: tuple = ()  # extra attributes pickled with the adapter (the rest is re-derived by bind())

    def __init__(self, model, ag):
        self.model = model
        self.ag = ag
        self.installed = False
        self.bind()
        self.replacements = list(self.declare())
        for replacement in self.replacements:
            if replacement.replaced():
                raise ActionGPTError(f"{replacement.describe()} is already replaced; uninstall first")

    @classmethod
    def matches(cls, model) -> bool:
        raise NotImplementedError

    def bind(self) -> None:
        """Derive everything else from ``self.model`` (also run after unpickling, on first use)."""

    def declare(self) -> list:
        """The ``Replacement`` objects ``install`` applies (in order) and ``uninstall`` reverses."""
        raise NotImplementedError

    @property
    def text_encoder(self):
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

    # -- installation, written once for every adapter -------------------------------------------
    def install(self) -> None:
        for replacement in self.replacements:
            replacement.install(self)
        self.installed = True

    def uninstall(self) -> None:
        for replacement in reversed(self.replacements):
            replacement.uninstall(self)
        self.installed = False

    # -- pickling -------------------------------------------------------------------------------
    def __getstate__(self):
        names = ("model", "ag", "installed", "replacements") + self.portable
        return {name: self.__dict__[name] for name in names if name in self.__dict__}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._unbound = True  # the model may still be half-built here: bind() on first use
        if self.installed:
            for replacement in self.replacements:
                if replacement.in_code and not replacement.replaced():
                    replacement.install(self)  # a fresh process: put the class / module patch back

    def __getattr__(self, name):
        # Only reached for attributes bind() derives, on an adapter unpickled in another process.
        if name.startswith("__") or not self.__dict__.get("_unbound"):
            raise AttributeError(name)
        self._unbound = False
        self.bind()
        return getattr(self, name)


class Replacement:
    """One thing an adapter replaces. ``in_code``: it lives in a class or module, not in the model's
    own objects, so pickling the model cannot carry it: the unpickled adapter re-installs it."""

    in_code = False

    def describe(self) -> str:
        raise NotImplementedError

    def replaced(self) -> bool:
        """Whether some ActionGPT has already replaced it (installing twice is refused)."""
        raise NotImplementedError

    def install(self, adapter) -> None:
        raise NotImplementedError

    def uninstall(self, adapter) -> None:
        raise NotImplementedError


class InstanceAttribute(Replacement):
    """``owner.<name>`` becomes a plain instance attribute (no module, parameter or buffer): a
    ``MethodDropIn`` calling ``adapter.encode_for(target, ...)``, falling back to ``target.<method>``.
    What the instance had under that name before (MDM's bound method) is put back by ``uninstall``."""

    def __init__(self, owner, name: str, target=None, method: str | None = None):
        self.owner, self.name = owner, name
        self.target = owner if target is None else target
        self.method = method or name
        self.saved = None

    def describe(self):
        return f"{self.name} of this {type(self.owner).__name__}"

    def replaced(self):
        return isinstance(vars(self.owner).get(self.name), MethodDropIn)

    def install(self, adapter):
        self.saved = (vars(self.owner)[self.name],) if self.name in vars(self.owner) else None
        self.owner.__dict__[self.name] = MethodDropIn(adapter, self.target, self.method)

    def uninstall(self, adapter):
        if self.saved is None:
            self.owner.__dict__.pop(self.name, None)
        else:
            self.owner.__dict__[self.name] = self.saved[0]
        self.saved = None


class MethodDropIn:
    """An instance attribute standing in for a text-encoding method of ``owner`` while installed.

    Calls ``adapter.encode_for(owner, ...)`` outside torch.compile graphs; once the adapter is
    uninstalled, a copy left behind calls the original method. ``copy.deepcopy`` of the owner
    (MDM's EMA copy) gives the copy its own drop-in sharing the same adapter; pickling keeps the
    drop-in and its adapter (the ActionGPT travels with the model).
    """

    def __init__(self, adapter, owner, method: str):
        self.adapter, self.owner, self.method = adapter, owner, method

    def original(self):
        return getattr(type(self.owner), self.method).__get__(self.owner)

    def __call__(self, *args, **kwargs):
        if not self.adapter.installed:
            return self.original()(*args, **kwargs)
        return self.adapter.ag.eager(self.adapter.encode_for, self.owner, *args, **kwargs)

    def __deepcopy__(self, memo):
        return MethodDropIn(self.adapter, memo.get(id(self.owner), self.owner), self.method)


def _patch(adapter, original, handler: str):
    """The function put in place of ``original``: calls ``adapter.<handler>`` (marked for the guard)."""
    if handler == "encode_for":  # a method: the instance comes first; run outside compiled graphs
        def patched(obj, *args, **kwargs):
            return adapter.ag.eager(adapter.encode_for, obj, *args, **kwargs)
    else:
        def patched(*args, **kwargs):
            return getattr(adapter, handler)(*args, **kwargs)
    functools.update_wrapper(patched, original)
    patched._actiongpt_adapter = adapter
    patched._actiongpt_original = original
    return patched


def unpatched(fn):
    """The upstream function behind an ActionGPT patch (``fn`` itself when it is not patched)."""
    return getattr(fn, "_actiongpt_original", fn)


class ClassAttribute(Replacement):
    """``owner.<name>`` of a class: every instance, present and future (``load_from_checkpoint``), goes
    through ``adapter.<handler>(instance, ...)``. The class is pickled by reference, never the function."""

    in_code = True

    def __init__(self, owner, name: str, handler: str = "encode_for"):
        self.owner, self.name, self.handler = owner, name, handler

    def describe(self):
        return f"{self.name} of {self.owner.__name__}"

    def current(self):
        return getattr(self.owner, self.name)

    def replaced(self):
        return getattr(self.current(), "_actiongpt_adapter", None) is not None

    def install(self, adapter):
        setattr(self.owner, self.name, _patch(adapter, unpatched(self.owner.__dict__[self.name]), self.handler))

    def uninstall(self, adapter):
        patch = self.owner.__dict__[self.name]
        if getattr(patch, "_actiongpt_adapter", None) is adapter:
            setattr(self.owner, self.name, unpatched(patch))


class ModuleAttribute(ClassAttribute):
    """A module-level function (T2M-GPT's ``clip.load``) calling ``adapter.<handler>`` while installed.
    The module is pickled by name and imported again in another process."""

    def describe(self):
        return f"{self.owner.__name__}.{self.name}"

    def __getstate__(self):
        return {**self.__dict__, "owner": self.owner.__name__}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.owner = importlib.import_module(state["owner"])


class Proxy(Replacement):
    """``owner.<attr>`` (a text model) swapped for a proxy the adapter builds (``adapter.make_proxy(real)``)
    sharing the real model's tensors; ``uninstall`` puts the real object back."""

    def __init__(self, owner, attr: str):
        self.owner, self.attr = owner, attr

    def describe(self):
        return f"{self.attr} of this {type(self.owner).__name__}"

    def replaced(self):
        return is_proxy(getattr(self.owner, self.attr, None))

    def install(self, adapter):
        setattr(self.owner, self.attr, adapter.make_proxy(getattr(self.owner, self.attr)))

    def uninstall(self, adapter):
        proxy = getattr(self.owner, self.attr)
        if is_proxy(proxy):
            real = proxy.__dict__["_actiongpt_real"]
            real.training = proxy.training  # eval()/train() calls made meanwhile
            setattr(self.owner, self.attr, real)


def is_proxy(obj) -> bool:
    return obj is not None and "_actiongpt_real" in getattr(obj, "__dict__", {})


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
