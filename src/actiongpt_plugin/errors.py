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


# -- keeping secrets out of every message -----------------------------------------------------------
import os  # noqa: E402
import re  # noqa: E402

_secrets: set[str] = set()
# Environment variables whose values are credentials; backends add theirs when they register.
SECRET_ENV = {"OPENAI_API_KEY"}
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@:]*(?::[^/\s@]*)?@", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+\S+", re.IGNORECASE)


def add_secret(value) -> None:
    """Remember a credential so that `redact` removes it from anything shown."""
    if isinstance(value, str) and len(value) >= 4:
        _secrets.add(value)


def strip_credentials(url: str) -> str:
    """``http://user:KEY@host/v1`` -> ``http://host/v1``."""
    return _URL_CREDENTIALS.sub(r"\1", url)


def redact(text) -> str:
    """``text`` with every known credential, URL password and bearer token masked."""
    text = str(text)
    secrets = set(_secrets)
    secrets.update(v for v in (os.environ.get(name) for name in SECRET_ENV) if v and len(v) >= 4)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _BEARER.sub(r"\1 ***", text)
