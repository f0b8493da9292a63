"""Heavy libraries imported on first use.

Every command loads every plugin module; importing torch and openai there would cost seconds
for commands that never touch them (`config show`, an identity or pack expansion, an error).
"""
import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)  # sys.modules makes repeats cheap


torch = LazyModule("torch")
openai = LazyModule("openai")
