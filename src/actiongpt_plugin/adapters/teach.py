"""TEACH (athn-nik/teach): class-level ``get_last_hidden_state`` (a built-in adapter plugin).

TEACH's text encoders (``TextHist`` by default) derive from
``teach.model.textencoder.distilbert.DistilbertEncoderBase``, the same text path as TEMOS. TEACH
scripts call ``model.load_from_checkpoint(...)``, which builds a NEW instance, so the method is
replaced on that class (every instance, present and future, goes through ActionGPT) and put back
by ``uninstall``. No TEACH code is imported or shipped: classes are recognised by name and module.
"""
from __future__ import annotations

import functools

from ..hookspecs import hookimpl
from .temos import METHOD, TemosAdapter


class TeachAdapter(TemosAdapter):
    name = "teach"
    package = "teach"

    def install(self):
        @functools.wraps(self.original)
        def get_last_hidden_state(encoder, texts, return_mask=False):
            return self.encode_for(encoder, texts, return_mask)

        get_last_hidden_state._actiongpt_adapter = self
        setattr(self.cls, METHOD, get_last_hidden_state)

    def uninstall(self):
        setattr(self.cls, METHOD, self.original)


@hookimpl
def register_adapters(register):
    register(TeachAdapter)
