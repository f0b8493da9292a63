"""`option`: how every configuration option is declared, by the core and by plugins alike."""
from dataclasses import field


def option(default=None, help: str = "", *, choices=None, low=None, high=None, secret: bool = False, factory=None):
    """A config option: its default plus what validation, `config show` and docs/configuration.md need.

    ``choices``: the valid values; ``low``/``high``: an inclusive numeric range; ``secret``: masked in
    every dump and kept out of every message (API keys, tokens). ``factory``: for a nested section.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "low": low, "high": high, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
