"""The one exception type users see: the CLI prints its message as a single line and exits non-zero."""


class ActionGPTError(Exception):
    """A problem with the user's input, configuration or environment (not a bug)."""


class MissingDescriptionsError(ActionGPTError):
    """Strict/offline mode met phrases with no stored descriptions."""

    def __init__(self, phrases):
        self.phrases = list(phrases)
        shown = ", ".join(repr(p) for p in self.phrases[:10])
        more = f" (+{len(self.phrases) - 10} more)" if len(self.phrases) > 10 else ""
        super().__init__(f"no stored descriptions for {len(self.phrases)} phrase(s): {shown}{more}")


class FatalBackendError(ActionGPTError):
    """An error every further request would repeat (bad key, unknown model, missing package): stop the run."""
