"""TEACH (athn-nik/teach): class-level ``get_last_hidden_state`` (a built-in adapter plugin).

TEACH's text encoders (``TextHist`` by default) derive from
``teach.model.textencoder.distilbert.DistilbertEncoderBase``, the same text path as TEMOS. TEACH
scripts call ``model.load_from_checkpoint(...)``, which builds a NEW instance, so the adapter declares
a class attribute: the method is replaced on that class (every instance, present and future, goes
through ActionGPT) and put back by ``uninstall``. A model pickled into a fresh process (spawned
workers) patches the class there again. No TEACH code is imported or shipped: classes are
recognised by name and module.
"""
from __future__ import annotations

from ..hookspecs import hookimpl
from .base import ClassAttribute
from .temos import METHOD, TemosAdapter


class TeachAdapter(TemosAdapter):
    name = "teach"
    package = "teach"

    def declare(self):
        return [ClassAttribute(self.cls, METHOD)]


@hookimpl
def register_adapters(register):
    register(TeachAdapter)
