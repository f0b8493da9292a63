"""actiongpt-plugin: plug large language models into text-to-motion models (Action-GPT)."""
from .config import load_config
from .errors import ActionGPTError, MissingDescriptionsError
from .expander import Expander
from .hookspecs import hookimpl

__version__ = "0.1.0"


def __getattr__(name):
    # ActionGPT pulls in torch; import it only when asked for.
    if name == "ActionGPT":
        from .actiongpt import ActionGPT

        return ActionGPT
    raise AttributeError(name)


__all__ = ["ActionGPT", "ActionGPTError", "Expander", "MissingDescriptionsError", "hookimpl", "load_config"]
