"""Configuration: defaults < YAML file (--config or ACTIONGPT_CONFIG) < key=value overrides.

The schema is assembled from the registry: the core sections below plus one section per registered
part that declares an options dataclass (a backend's ``openai.*``, a third-party ``mine.*``). Every
option is declared with :func:`option`, so the same declaration drives validation (types, choices,
ranges), masking of secrets in every dump, and the rows of docs/configuration.md
(`actiongpt config docs`). ``load_config`` turns every rejection into a one-line ActionGPTError
naming the key, never echoing the rejected value (it may be a key pasted into the wrong place).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .backends.base import SamplingParams
from .errors import ActionGPTError, add_secret
from .options import option

CONFIG_ENV = "ACTIONGPT_CONFIG"
MAX_SAMPLES = 128  # samples asked per phrase at most (OpenAI's n limit; packs check the same bound)
MASK = "***"


def default_cache_dir() -> Path:
    base = os.environ.get("ACTIONGPT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "actiongpt"
    )
    return Path(base)


@dataclass
class StoreConfig:
    path: Optional[str] = option(None, "default: $ACTIONGPT_HOME/store.sqlite (~/.cache/actiongpt)")
    enabled: bool = option(True, "keep every paid answer (turn off only for throw-away runs)")
    offline: bool = option(False, "strict: a phrase a paid backend would be asked about is an error listing them")


@dataclass
class ExpandConfig:
    concurrency: int = option(32, "the most requests in flight; the backend may adapt below it", low=1, high=1024)
    attempts: int = option(3, "extra requests for phrases left with fewer than k usable descriptions", low=0, high=20)
    oversample: float = option(1.0, "ask for ceil(k * oversample) samples; select_descriptions keeps k", low=1.0, high=8.0)
    min_words: int = option(3, "shorter descriptions are dropped as truncated or empty", low=0, high=100)
    max_phrase_chars: int = option(500, "longer input is a mistake (a pasted file?), not an action phrase", low=1,
                                   high=10_000)


@dataclass
class EmbeddingConfig:
    aggregator: str = option("paper", "how k description embeddings combine (docs/adapters.md)")
    cache: bool = option(True, "aggregated features of frozen text models, reused across steps")
    cache_size: int = option(8192, "phrases kept (least recently used dropped first); 0: unbounded", low=0)
    cache_device: Optional[str] = option(None, "where cached features live; null: the text model's device")
    on_missing: str = option("expand", "a phrase never expanded: expand it now, or strict (store only, listed)",
                             choices=("expand", "strict"))
    batch_size: int = option(64, "phrases per text-model call in prepare()", low=1, high=65_536)
    persist: bool = option(False, "also keep aggregated features on disk (every process and later runs reuse them)")
    persist_path: Optional[str] = option(None, "default: $ACTIONGPT_HOME/embeddings.sqlite")
    long_text: str = option("split", "descriptions over the text model's budget (docs/caption-mode.md)",
                            choices=("split", "trim", "truncate"))
    text_budget: Optional[int] = option(None, "tokens for split/trim; null: the model's own (CLIP 75, MDM 20)", low=1)


@dataclass
class QualityConfig:
    rerank: bool = option(False, "keep the k candidates most relevant to the phrase (with expand.oversample > 1)")
    embedder: str = option("all-MiniLM-L6-v2", "or a local sentence-transformers directory")
    min_relevance: float = option(0.3, "below: off-topic for this phrase (docs/quality.md)", low=-1.0, high=1.0)
    min_movement: float = option(0.35, "below: not about body movement at all", low=-1.0, high=1.0)


def core_fields() -> list:
    """(name, type, field) of the sections every configuration has, in the order `config show` prints them."""
    return [
        ("k", int, option(4, "descriptions per phrase (the release: 4)", low=1, high=64)),
        ("backend", str, option("auto", "auto: the first ready backend that may be picked (openai with a key, "
                                        "else embedded)")),
        ("model", Optional[str], option(None, "overrides the chosen backend's own model setting")),
        ("template", Optional[str], option(None, "null: the backend's recommended template")),
        ("sampling", SamplingParams, option(help="the release's Completions parameters", factory=SamplingParams)),
        ("store", StoreConfig, option(help="the SQLite description store", factory=StoreConfig)),
        ("expand", ExpandConfig, option(help="how phrases are expanded", factory=ExpandConfig)),
        ("embedding", EmbeddingConfig, option(help="ActionGPT: embedding and aggregation", factory=EmbeddingConfig)),
        ("quality", QualityConfig, option(help="relevance reranking (docs/quality.md)", factory=QualityConfig)),
    ]


def build_schema(sections: dict) -> type:
    """The Config dataclass: the core fields plus ``sections`` (name -> options dataclass of a part)."""
    core = core_fields()
    taken = {name for name, _, _ in core}
    extra = []
    for name, options in sections.items():
        if name in taken:
            raise ActionGPTError(f"config section {name!r} of a plugin clashes with a core config key")
        doc = (options.__doc__ or "").strip()
        summary = "" if not doc or doc.startswith(options.__name__ + "(") else doc.splitlines()[0]  # not the
        extra.append((name, options, option(help=summary, factory=options)))  # signature dataclass writes
    return dataclasses.make_dataclass("Config", core + extra)


def schema() -> type:
    from .plugins import get_registry

    return get_registry().config_schema


# -- walking the schema -------------------------------------------------------------------------
def walk_options(cls, prefix: str = ""):
    """(dotted key, dataclasses.Field, options-class or None) for every option, depth first."""
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            yield prefix + f.name, f, type(default)
            yield from walk_options(type(default), prefix + f.name + ".")
        else:
            yield prefix + f.name, f, None


def secret_keys(cls) -> set:
    return {key for key, f, _ in walk_options(cls) if f.metadata.get("secret")}


def _unknown(key: str, known: list) -> ActionGPTError:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    if parent and parent not in known:
        return _unknown(parent, known)
    siblings = [k[len(parent) + 1 if parent else 0:].split(".")[0] for k in known
                if not parent or k.startswith(parent + ".")]
    return ActionGPTError(f"unknown config key {key!r}; valid keys here: {', '.join(dict.fromkeys(siblings))}")


def _explain(exc: OmegaConfBaseException, cls) -> ActionGPTError:
    """A one-line message naming the key. omegaconf's own text quotes the value: it is never shown."""
    key = str(getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?")
    known = {k: (f, section) for k, f, section in walk_options(cls)}
    if key not in known:
        return _unknown(key, list(known))
    f, section = known[key]
    if section is not None:
        example = next(k for k in known if k.startswith(key + "."))
        return ActionGPTError(f"config key {key!r} is a section: set one of its keys, e.g. {example}=...")
    kind = getattr(f.type, "__name__", None) or str(f.type).replace("typing.", "")
    return ActionGPTError(f"bad value for config key {key!r}: expected {kind}")


def _culprit(layer: DictConfig, cls) -> ActionGPTError | None:
    """The first key of ``layer`` the schema cannot take (omegaconf does not always name it)."""
    known = {k: section for k, _, section in walk_options(cls)}

    def leaves(node, prefix=""):
        for name, value in node.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict) and known.get(key) is not None:
                yield from leaves(value, key + ".")
            else:
                yield key, value

    for key, value in leaves(OmegaConf.to_container(layer)):
        if key not in known:
            return _unknown(key, list(known))
        if known[key] is not None:
            example = next(k for k in known if k.startswith(key + "."))
            return ActionGPTError(f"config key {key!r} is a section: set one of its keys, e.g. {example}=...")
    return None


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ActionGPTError(f"override {item.split(':')[0][:40]!r} must look like key=value "
                             "(e.g. sampling.temperature=0.7)")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ActionGPTError("an override has an empty key: it must look like key=value")
    try:
        return OmegaConf.from_dotlist([f"{key.strip()}={value}"])
    except OmegaConfBaseException:
        raise ActionGPTError(f"cannot parse the override of {key.strip()!r}: write key=value") from None


def _read_file(path) -> DictConfig:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ActionGPTError(f"config file not found: {p}")
    import yaml

    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except Exception as exc:  # yaml errors are multi-line; keep the first line
        raise ActionGPTError(f"cannot read config file {p}: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ActionGPTError(f"config file {p} must be a mapping of keys (like 'k: 4'), not a {type(data).__name__}")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        raise ActionGPTError(f"cannot read config file {p}: {str(exc).splitlines()[0]}") from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = (), **values: Any) -> DictConfig:
    """Resolve the configuration. ``values`` are dotted keys given in Python (``k=8``) or whole sections."""
    cls = schema()
    cfg = OmegaConf.structured(cls)
    path = path or os.environ.get(CONFIG_ENV)
    layers = [_read_file(path)] if path else []
    layers += [_parse_override(item) for item in overrides]
    if values:
        layers.append(OmegaConf.create(_nest(values)))
    for layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise _culprit(layer, cls) or _explain(exc, cls) from None
    for key in secret_keys(cls):
        add_secret(OmegaConf.select(cfg, key))
    validate(cfg, cls)
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


def _range_text(low, high) -> str:
    if low is not None and high is not None:
        return f"must be at least {low} and at most {high}"
    return f"must be at least {low}" if low is not None else f"must be at most {high}"


def validate(cfg: DictConfig, cls=None) -> None:
    """Choices and ranges declared with `option`, for every section (core and plugins alike)."""
    cls = cls or schema()
    for key, f, section in walk_options(cls):
        if section is not None:
            continue
        value, meta = OmegaConf.select(cfg, key), f.metadata
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            shown = "a value" if meta.get("secret") else repr(value)
            raise ActionGPTError(f"bad value {shown} for config key {key!r}; valid choices: {', '.join(meta['choices'])}")
        low, high = meta.get("low"), meta.get("high")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (low is not None and value < low) or (high is not None and value > high):
                raise ActionGPTError(f"bad value {value!r} for config key {key!r}: {_range_text(low, high)}")


    samples = math.ceil(cfg.k * cfg.expand.oversample)
    if samples > MAX_SAMPLES:
        raise ActionGPTError(f"k={cfg.k} with expand.oversample={cfg.expand.oversample} asks for {samples} samples "
                             f"per phrase; at most {MAX_SAMPLES} (the API's n limit)")


def validate_choices(cfg: DictConfig) -> None:
    """Check the names that plugins provide (backend, template, aggregator) against the registry."""
    from .plugins import get_registry

    reg = get_registry()
    if cfg.backend != "auto":
        reg.backend(cfg.backend)
    if cfg.template:
        reg.template(cfg.template)
    reg.aggregator(cfg.embedding.aggregator)


def _replace_secrets(plain: dict, value) -> dict:
    for key in secret_keys(schema()):
        *parents, last = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) or {}
        if node.get(last):
            node[last] = value
    return plain


def to_plain(cfg: DictConfig, secrets: bool = True) -> dict:
    """A plain nested dict of ``cfg`` (picklable, printable); secrets dropped unless ``secrets``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return plain if secrets else _replace_secrets(plain, None)


def masked(cfg: DictConfig) -> DictConfig:
    """A copy safe to print or store: secrets replaced by a mask."""
    return OmegaConf.create(_replace_secrets(OmegaConf.to_container(cfg, resolve=True), MASK))


def settings(cfg: DictConfig):
    """The resolved config as a plain dataclass instance: what every hook receives as ``config``.

    Attribute reads on it are ~50x cheaper than on a DictConfig, which matters at a few dozen reads
    per phrase and thousands of phrases.
    """
    return OmegaConf.to_object(cfg)


def store_path(cfg) -> Path:
    return Path(cfg.store.path).expanduser() if cfg.store.path else default_cache_dir() / "store.sqlite"


# -- docs/configuration.md ------------------------------------------------------------------------
def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return OmegaConf.to_yaml({"v": value}).split(":", 1)[1].strip()


def reference_yaml(cls=None) -> str:
    """Every key with its default and its help (choices, range): the block in docs/configuration.md."""
    cls = cls or schema()
    lines = []
    for key, f, section in walk_options(cls):
        depth = key.count(".")
        name = key.rsplit(".", 1)[-1]
        meta = f.metadata
        notes = [meta.get("help") or ""]
        if meta.get("choices"):
            notes.append("one of: " + " | ".join(map(str, meta["choices"])))
        low, high = meta.get("low"), meta.get("high")
        if low is not None or high is not None:
            notes.append(f"{low}..{high}" if low is not None and high is not None
                         else f"at least {low}" if low is not None else f"at most {high}")
        if meta.get("secret"):
            notes.append("secret: masked in every dump")
        comment = "; ".join(n for n in notes if n)
        if section is not None:
            text = f"{'  ' * depth}{name}:"
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            text = f"{'  ' * depth}{name}: {_yaml_value(default)}"
        lines.append(f"{text:<27} # {comment}" if comment else text)
    return "\n".join(lines) + "\n"
