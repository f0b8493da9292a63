"""Plugin manager and registry: built-ins and third-party plugins load from the same entry-point group.

pluggy does the bookkeeping: entry points are loaded with ``load_setuptools_entrypoints`` (which also
records where each came from, ``list_plugin_distinfo``), disabled third-party plugins are
``set_blocked``, and ``check_pending`` turns a misspelled hook into a one-line error.

The registry collects what plugins register (backends, templates, aggregators, adapters). A
registration describes its part, options included, so the config schema is assembled from it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from typing import Callable

import pluggy

from . import hookspecs
from .errors import SECRET_ENV, ActionGPTError

GROUP = "actiongpt"
# Set to 1 to load only the plugins shipped with actiongpt-plugin (a third-party plugin broke things).
DISABLE_EXTERNAL_ENV = "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS"
OWN_DISTRIBUTION = "actiongpt-plugin"

_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None


def _external_disabled() -> bool:
    return os.environ.get(DISABLE_EXTERNAL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _own(dist_name: str | None) -> bool:
    return (dist_name or "").replace("_", "-").lower() == OWN_DISTRIBUTION


def _plugin_error(exc: Exception, name: str | None = None) -> ActionGPTError:
    """pluggy's multi-line validation messages, as one line naming the plugin."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    hook = re.search(r"hook '?([\w]+)'?", str(exc))
    detail = next((line for line in lines if "Argument" in line), lines[-1] if lines else type(exc).__name__)
    who = f"plugin {name!r}" if name else "a plugin"
    where = f" in hook {hook.group(1)}" if hook else ""
    return ActionGPTError(f"{who} is invalid{where}: {detail}")


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    points = list(metadata.entry_points(group=GROUP))
    if _external_disabled():
        for ep in points:
            if not _own(ep.dist.name if ep.dist else None):
                pm.set_blocked(ep.name)
    try:
        pm.load_setuptools_entrypoints(GROUP)
    except Exception as exc:
        raise _culprit(pm, points, exc) from None


def _culprit(pm: pluggy.PluginManager, points, exc: Exception) -> ActionGPTError:
    """Which entry point made ``load_setuptools_entrypoints`` fail (error path only)."""
    for ep in points:
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = ep.dist.name if ep.dist else None
        hint = "" if _own(dist) else f" (set {DISABLE_EXTERNAL_ENV}=1 to skip third-party plugins)"
        try:
            module = ep.load()
        except Exception as load_exc:
            return ActionGPTError(f"plugin {ep.name!r} from {dist} failed to load: {load_exc}{hint}")
        try:
            pm.register(module, name=ep.name)
        except pluggy.PluginValidationError as invalid:
            return ActionGPTError(f"{_plugin_error(invalid, ep.name)}{hint}")
    return ActionGPTError(f"a plugin failed to load: {exc}")


def _check(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) if exc.plugin is not None else None
        hook = re.search(r"unknown hook '(\w+)'", str(exc))
        known = ", ".join(sorted(n for n, caller in vars(pm.hook).items() if caller.has_spec()))
        raise ActionGPTError(f"plugin {name!r} implements an unknown hook {hook.group(1) if hook else '?'!r} "
                             f"(misspelled?); hooks: {known}") from None


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        _load_entry_points(pm)
        _check(pm)
        _pm = pm
    return _pm


def register_plugin(module_or_object, name: str | None = None) -> None:
    """Register a plugin at run time (tests, notebooks). Clears the cached registry."""
    global _registry
    pm = get_plugin_manager()
    try:
        pm.register(module_or_object, name=name)
    except pluggy.PluginValidationError as exc:
        raise _plugin_error(exc, name) from None
    try:
        _check(pm)
    except ActionGPTError:
        pm.unregister(module_or_object)
        raise
    _registry = None


def unregister_plugin(name: str) -> None:
    global _registry
    get_plugin_manager().unregister(name=name)
    _registry = None


def list_plugins() -> list[dict]:
    """Name, distribution and module of every loaded plugin, for `actiongpt plugins`."""
    pm = get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        dist = dists.get(id(plugin))
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        rows.append({
            "name": name,
            "distribution": dist.project_name if dist else None,
            "version": dist.version if dist else None,
            "source": module if dist else f"{module} (registered at run time)",
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
        })
    return rows


# -- what plugins register ------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendInfo:
    """A registered backend: what it is called, how it is built, its options and when `auto` picks it."""

    name: str
    factory: Callable  # factory(config) -> Backend; ``config.<name>`` holds its options
    options: type | None = None  # a dataclass of `option`s: the config section ``<name>.*``
    needs_key: bool = False  # expanding with it needs an API key (its options' api_key or key_env)
    key_env: str | None = None  # the environment variable holding that key
    auto: int | None = None  # backend=auto picks the ready backend with the highest value; None: never
    description: str = ""

    def __call__(self, config):
        """The backend for ``config`` (a registration is its own factory)."""
        return self.factory(config)

    @property
    def recommended_template(self) -> str | None:
        """The template a backend class declares, readable before anything loads (None: unknown yet)."""
        return getattr(self.factory, "recommended_template", None)

    def api_key(self, config) -> str | None:
        options = getattr(config, self.name, None) if self.options is not None else None
        key = getattr(options, "api_key", None) if options is not None else None
        return key or (os.environ.get(self.key_env) if self.key_env else None) or None

    def ready(self, config) -> bool:
        return not self.needs_key or bool(self.api_key(config))


@dataclass
class Registry:
    backends: dict = field(default_factory=dict)  # name -> BackendInfo
    templates: dict = field(default_factory=dict)  # name -> Template (newest version)
    template_versions: dict = field(default_factory=dict)  # (name, version) -> Template
    aggregators: dict = field(default_factory=dict)  # name -> Aggregator (or any callable)
    aggregator_options: dict = field(default_factory=dict)  # name -> options dataclass, where declared
    adapters: list = field(default_factory=list)  # adapter classes

    def _choice(self, kind: str, table: dict, name: str):
        if name not in table:
            valid = ", ".join(sorted(table)) or "(none registered)"
            raise ActionGPTError(f"unknown {kind} {name!r}; valid choices: {valid}")
        return table[name]

    def backend(self, name: str) -> BackendInfo:
        return self._choice("backend", self.backends, name)

    def template(self, name: str):
        """'name' gives the newest version, 'name@version' a specific one."""
        if "@" in name:
            base, _, version = name.partition("@")
            self._choice("template", self.templates, base)
            key = (base, version)
            if key not in self.template_versions:
                versions = sorted(v for (n, v) in self.template_versions if n == base)
                raise ActionGPTError(f"unknown version {version!r} of template {base!r}; valid: {', '.join(versions)}")
            return self.template_versions[key]
        return self._choice("template", self.templates, name)

    def aggregator(self, name: str):
        return self._choice("aggregator", self.aggregators, name)

    def auto_backend(self, config) -> str:
        """What ``backend=auto`` means for this config: the ready backend with the highest ``auto``."""
        candidates = sorted((b for b in self.backends.values() if b.auto is not None), key=lambda b: -b.auto)
        for info in candidates:
            if info.ready(config):
                return info.name
        raise ActionGPTError("backend=auto found no ready backend: set backend=... (see `actiongpt plugins`)")

    @property
    def option_sections(self) -> dict:
        """Config section name -> options dataclass, for every part that declares options."""
        sections: dict = {}
        parts = [(b.name, b.options) for b in self.backends.values()]
        parts += list(self.aggregator_options.items())
        parts += [(a.name, getattr(a, "options", None)) for a in self.adapters]
        for name, options in parts:
            if options is None:
                continue
            if name in sections and sections[name] is not options:
                raise ActionGPTError(f"two plugins declare options for the config section {name!r}")
            sections[name] = options
        return sections

    @cached_property
    def config_schema(self) -> type:
        from .config import build_schema

        return build_schema(self.option_sections)


def _version_key(version: str):
    return tuple(int(p) if p.isdigit() else p for p in str(version).split("."))


def get_registry() -> Registry:
    """Collect everything plugins register. Cached until plugins change."""
    global _registry
    if _registry is not None:
        return _registry
    pm = get_plugin_manager()
    reg = Registry()

    def add_backend(name, factory, *, options=None, needs_key=False, key_env=None, auto=None, description=""):
        reg.backends[name] = BackendInfo(name, factory, options, needs_key, key_env, auto, description)
        if key_env:
            SECRET_ENV.add(key_env)

    def add_template(template):
        reg.template_versions[(template.name, str(template.version))] = template
        current = reg.templates.get(template.name)
        if current is None or _version_key(template.version) > _version_key(current.version):
            reg.templates[template.name] = template

    def add_aggregator(name, aggregator, *, options=None):
        reg.aggregators[name] = aggregator
        if options is not None:
            reg.aggregator_options[name] = options

    def add_adapter(adapter_cls):
        if adapter_cls not in reg.adapters:
            reg.adapters.append(adapter_cls)

    pm.hook.register_backends(register=add_backend)
    pm.hook.register_templates(register=add_template)
    pm.hook.register_aggregators(register=add_aggregator)
    pm.hook.register_adapters(register=add_adapter)
    _registry = reg
    return reg
