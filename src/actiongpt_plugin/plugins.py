"""Plugin manager: built-ins and third-party plugins load from the same entry-point group."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import ActionGPTError

GROUP = "actiongpt"
# Set to 1 to load only the plugins shipped with actiongpt-plugin (a third-party plugin broke things).
DISABLE_EXTERNAL_ENV = "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS"
OWN_DISTRIBUTION = "actiongpt-plugin"

_pm: pluggy.PluginManager | None = None
_registry: "Registry | None" = None


def _external_disabled() -> bool:
    return os.environ.get(DISABLE_EXTERNAL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else None
        if _external_disabled() and dist != OWN_DISTRIBUTION:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            module = ep.load()
        except Exception as exc:
            hint = "" if dist == OWN_DISTRIBUTION else f" (set {DISABLE_EXTERNAL_ENV}=1 to skip third-party plugins)"
            raise ActionGPTError(f"plugin {ep.name!r} from {dist} failed to load: {exc}{hint}") from None
        pm.register(module, name=ep.name)
        pm._actiongpt_sources[ep.name] = (dist, ep.value)


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(hookspecs)
        pm._actiongpt_sources = {}
        _load_entry_points(pm)
        _pm = pm
    return _pm


def register_plugin(module_or_object, name: str | None = None) -> None:
    """Register a plugin at run time (tests, notebooks). Clears the cached registry."""
    global _registry
    pm = get_plugin_manager()
    pm.register(module_or_object, name=name)
    pm._actiongpt_sources[pm.get_name(module_or_object)] = (None, "registered at run time")
    _registry = None


def unregister_plugin(name: str) -> None:
    global _registry
    pm = get_plugin_manager()
    pm.unregister(name=name)
    pm._actiongpt_sources.pop(name, None)
    _registry = None


def list_plugins() -> list[dict]:
    """Name, distribution and location of every loaded plugin, for `actiongpt plugins`."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        dist, where = pm._actiongpt_sources.get(name, (None, ""))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "distribution": dist, "source": where, "hooks": hooks})
    return rows


@dataclass
class Registry:
    backends: dict = field(default_factory=dict)
    templates: dict = field(default_factory=dict)  # name -> Template (newest version)
    template_versions: dict = field(default_factory=dict)  # (name, version) -> Template
    aggregators: dict = field(default_factory=dict)
    adapters: list = field(default_factory=list)

    def _choice(self, kind: str, table: dict, name: str):
        if name not in table:
            valid = ", ".join(sorted(table)) or "(none registered)"
            raise ActionGPTError(f"unknown {kind} {name!r}; valid choices: {valid}")
        return table[name]

    def backend(self, name: str):
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


def _version_key(version: str):
    return tuple(int(p) if p.isdigit() else p for p in str(version).split("."))


def get_registry() -> Registry:
    """Collect everything plugins register. Cached until plugins change."""
    global _registry
    if _registry is not None:
        return _registry
    pm = get_plugin_manager()
    reg = Registry()

    def add_backend(name, factory):
        reg.backends[name] = factory

    def add_template(template):
        reg.template_versions[(template.name, str(template.version))] = template
        current = reg.templates.get(template.name)
        if current is None or _version_key(template.version) > _version_key(current.version):
            reg.templates[template.name] = template

    def add_aggregator(name, aggregator):
        reg.aggregators[name] = aggregator

    def add_adapter(adapter_cls):
        if adapter_cls not in reg.adapters:
            reg.adapters.append(adapter_cls)

    pm.hook.register_backends(register=add_backend)
    pm.hook.register_templates(register=add_template)
    pm.hook.register_aggregators(register=add_aggregator)
    pm.hook.register_adapters(register=add_adapter)
    _registry = reg
    return reg


def plugin_location(name: str) -> str:
    plugin = get_plugin_manager().get_plugin(name)
    module = sys.modules.get(getattr(plugin, "__name__", ""), None)
    return getattr(module, "__file__", "") or ""
