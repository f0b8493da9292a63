"""Configuration: defaults < YAML file (--config or ACTIONGPT_CONFIG) < key=value overrides.

The schema is a set of dataclasses, so omegaconf rejects unknown keys and ill-typed values;
`load_config` turns those rejections into one-line ActionGPTErrors naming the key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ActionGPTError

CONFIG_ENV = "ACTIONGPT_CONFIG"
SECRET_KEYS = ("api_key",)
MASK = "***"


def option(default=None, help: str = "", *, choices=None, low=None, high=None, secret: bool = False, factory=None):
    """A config option: its default plus what validation, `config show` and docs/configuration.md need.

    ``choices``: the valid values; ``low``/``high``: an inclusive numeric range; ``secret``: masked in
    every dump and kept out of messages (API keys, tokens).
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "low": low, "high": high, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_cache_dir() -> Path:
    base = os.environ.get("ACTIONGPT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "actiongpt"
    )
    return Path(base)


@dataclass
class SamplingConfig:
    # The release's Completions parameters (text-davinci-002).
    temperature: float = 0.5
    top_p: float = 1.0
    max_tokens: int = 128
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: Optional[int] = None


@dataclass
class OpenAIConfig:
    api_key: Optional[str] = None  # falls back to OPENAI_API_KEY
    base_url: Optional[str] = None  # falls back to OPENAI_BASE_URL (vLLM, Ollama, llama.cpp, TGI)
    model: Optional[str] = None  # None: gpt-4o-mini on OpenAI's API, else the one model the server lists
    api: str = "chat"  # chat | completions
    concurrency: int = 32  # the ceiling of the adaptive window
    adaptive: bool = True  # adapt requests in flight to the server (backends/openai_backend.OpenAIOptions)
    max_retries: int = 5
    timeout: float = 60.0
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_wait: float = 60.0  # longest wait before a retry, even when Retry-After asks for more


@dataclass
class TransformersConfig:
    model: Optional[str] = None  # a local model directory or a .gguf file
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class EmbeddedConfig:
    engine: str = "auto"  # auto | llamacpp | transformers
    batch_size: int = 8


@dataclass
class PackConfig:
    path: Optional[str] = None  # JSONL pack or the release's gpt3_annotations.json


@dataclass
class StoreConfig:
    path: Optional[str] = None  # default: <cache dir>/store.sqlite
    enabled: bool = True
    offline: bool = False  # strict: a miss is an error listing the missing phrases


@dataclass
class ExpandConfig:
    concurrency: int = 32
    attempts: int = 3  # extra requests when too few usable descriptions come back
    oversample: float = 1.0  # ask for ceil(k * oversample) samples; `select_descriptions` keeps k
    min_words: int = 3  # shorter descriptions are dropped as truncated or empty
    max_phrase_chars: int = 500  # longer input is a mistake (a pasted file?), not an action phrase


@dataclass
class EmbeddingConfig:
    aggregator: str = "paper"
    cache: bool = True  # aggregated features of frozen text models, reused across steps
    cache_size: int = 8192  # phrases kept (least recently used dropped first)
    cache_device: Optional[str] = None  # where cached features live; None: the text model's device
    on_missing: str = "expand"  # expand | strict (phrases never expanded/prepared: store only)
    batch_size: int = 64  # phrases per text-model call in prepare()
    persist: bool = False  # also keep aggregated features on disk (every process and later runs reuse them)
    persist_path: Optional[str] = None  # default: <cache dir>/embeddings.sqlite
    long_text: str = "split"  # split | trim | truncate: descriptions over the text model's budget (adapters/textbudget.py)
    text_budget: Optional[int] = None  # tokens for split/trim; None: the model's own (CLIP 75, MDM on HumanML3D/KIT 20)


@dataclass
class QualityConfig:
    rerank: bool = False  # keep the k candidates most relevant to the phrase (with expand.oversample > 1)
    embedder: str = "all-MiniLM-L6-v2"  # or a local sentence-transformers directory
    min_relevance: float = 0.3  # below: off-topic for this phrase (see docs/quality.md)
    min_movement: float = 0.35  # below: not about body movement at all


@dataclass
class Config:
    k: int = 4
    backend: str = "auto"  # auto: openai when an API key is configured, else embedded
    model: Optional[str] = None  # overrides the chosen backend's own model setting
    template: Optional[str] = None  # None: the backend's recommended one ("actiongpt", the release's prompt, for APIs)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    transformers: TransformersConfig = field(default_factory=TransformersConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    expand: ExpandConfig = field(default_factory=ExpandConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)


CHOICES = {
    "openai.api": ("chat", "completions"),
    "embedded.engine": ("auto", "llamacpp", "transformers"),
    "embedding.on_missing": ("expand", "strict"),
    "embedding.long_text": ("split", "trim", "truncate"),
}


def _valid_keys(node, prefix="") -> list[str]:
    keys = []
    for f in fields(node):
        default = f.default_factory() if f.default_factory is not field().default_factory else None
        if is_dataclass(default):
            keys += _valid_keys(default, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _explain(exc: OmegaConfBaseException) -> ActionGPTError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
    if isinstance(exc, ConfigKeyError) or "not in" in str(exc):
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = dict.fromkeys(k[len(parent):].split(".")[0] for k in _valid_keys(Config) if k.startswith(parent))
        return ActionGPTError(f"unknown config key {key!r}; valid keys here: {', '.join(siblings)}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return ActionGPTError(f"bad value for config key {key!r}: {msg}")
    return ActionGPTError(f"config error at {key!r}: {str(exc).splitlines()[0]}")


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ActionGPTError(f"override {item!r} must look like key=value (e.g. sampling.temperature=0.7)")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ActionGPTError(f"override {item!r} has an empty key")
    return OmegaConf.from_dotlist([f"{key.strip()}={value}"])


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = (), **values: Any) -> DictConfig:
    """Resolve the configuration. ``values`` are dotted keys given in Python (``k=8``)."""
    cfg = OmegaConf.structured(Config)
    path = path or os.environ.get(CONFIG_ENV)
    layers = []
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ActionGPTError(f"config file not found: {p}")
        try:
            layers.append(OmegaConf.load(p))
        except Exception as exc:  # yaml errors are multi-line; keep the first line
            raise ActionGPTError(f"cannot read config file {p}: {str(exc).splitlines()[0]}") from None
    for item in overrides:
        layers.append(_parse_override(item))
    if values:
        layers.append(OmegaConf.create(_nest(values)))
    try:
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:
        raise _explain(exc) from None
    validate(cfg)
    return cfg


def _nest(values: dict) -> dict:
    out: dict = {}
    for dotted, value in values.items():
        node = out
        parts = dotted.replace("__", ".").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def validate(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ActionGPTError(f"bad value {value!r} for config key {key!r}; valid choices: {', '.join(choices)}")
    if cfg.k < 1:
        raise ActionGPTError(f"bad value {cfg.k!r} for config key 'k': must be at least 1")
    for key in ("openai.concurrency", "expand.concurrency", "transformers.batch_size", "embedded.batch_size"):
        if OmegaConf.select(cfg, key) < 1:
            raise ActionGPTError(f"bad value for config key {key!r}: must be at least 1")
    if cfg.expand.oversample < 1:
        raise ActionGPTError("bad value for config key 'expand.oversample': must be at least 1.0")
    if not 0 <= cfg.sampling.temperature <= 2:
        raise ActionGPTError("bad value for config key 'sampling.temperature': must be between 0 and 2")


def validate_choices(cfg: DictConfig) -> None:
    """Check the names that plugins provide for expansion (backend, template) against the registry."""
    from .plugins import get_registry

    reg = get_registry()
    if cfg.backend != "auto":
        reg.backend(cfg.backend)
    if cfg.template:
        reg.template(cfg.template)


def masked(cfg: DictConfig) -> DictConfig:
    """A copy safe to print or store: secrets replaced by a mask."""
    copy = OmegaConf.to_container(cfg, resolve=True)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_KEYS and value:
                    node[key] = MASK
                else:
                    walk(value)

    walk(copy)
    return OmegaConf.create(copy)


def openai_api_key(cfg: DictConfig) -> str | None:
    return cfg.openai.api_key or os.environ.get("OPENAI_API_KEY") or None


def store_path(cfg: DictConfig) -> Path:
    return Path(cfg.store.path).expanduser() if cfg.store.path else default_cache_dir() / "store.sqlite"
