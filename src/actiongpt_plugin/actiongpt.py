"""ActionGPT: wrap a text-to-motion model so its text encoder sees LLM descriptions, not labels.

    ag = ActionGPT(model, k=4, backend="pack", **{"pack.path": "gpt3_annotations.json"})
    ag.prepare(all_labels)      # expand + embed the vocabulary once (optional)
    with ag:                    # install(); ... uninstall()
        train(model)

Each phrase is replaced by k descriptions, embedded by the model's own frozen text model (through
the adapter that fits the model) and aggregated (``embedding.aggregator``). Results are cached per
text-model weights and descriptions (in memory, and on disk with ``embedding.persist``), so a warm
cache never runs the text model for known phrases. An installed model pickled into another process
(spawned DDP workers) carries its ActionGPT (``__getstate__``); the drop-ins run outside
torch.compile graphs (``eager``).
"""
from __future__ import annotations

import pickle
import sys
from contextlib import nullcontext

import torch
from omegaconf import DictConfig, OmegaConf

from .adapters.base import find_adapter
from .config import default_cache_dir, load_config, to_plain
from .embedding import (
    EmbeddingCache, PersistentEmbeddings, descriptions_key, model_fingerprint, pad_tokens, stack_pooled, trim,
)
from .errors import ActionGPTError, MissingDescriptionsError
from .plugins import get_plugin_manager, get_registry


def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


_outside_graph = None  # _call under torch.compiler.disable, made once torch._dynamo is loaded


def _eager(fn, *args, **kwargs):
    """Run ``fn`` eagerly, outside torch.compile graphs (a graph break there).

    The drop-ins expand phrases, look features up in the caches (keyed by a fingerprint memo of the
    text model's weights) and aggregate them: Python bookkeeping that dynamo must neither trace nor
    guard on (guards on that memo failed recompiled runs). Until torch._dynamo is imported nothing
    can be compiling, so it is not imported here (about a second).
    """
    global _outside_graph
    if _outside_graph is None:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        _outside_graph = torch.compiler.disable(_call)
    return _outside_graph(fn, *args, **kwargs)


def portable_config(cfg) -> dict:
    """The resolved config as a plain dict without secrets (API keys): what a pickled ActionGPT carries."""
    return to_plain(cfg, secrets=False)


class ActionGPT:
    eager = staticmethod(_eager)

    def __init__(self, model, expander=None, *, cfg: DictConfig | None = None, adapter=None, **config):
        """``config``: dotted config keys (``k=4``, ``**{"pack.path": p}``), or a ready ``cfg``.

        ``expander``: any object with ``expand(phrases) -> {phrase: [descriptions]}``; by default
        an ``actiongpt_plugin.expander.Expander`` built from the config on first use.
        ``adapter``: an adapter name or class, to skip matching.
        """
        if cfg is not None and config:
            raise ActionGPTError("give either cfg= or config keys, not both")
        self._setup(cfg if cfg is not None else load_config(**config), expander)
        self.model = model
        self.adapter = find_adapter(model, get_registry().adapters, adapter)(model, self)
        if self.adapter.granularity == "pooled" and self.aggregator_name == "concat":
            raise ActionGPTError(f"aggregator 'concat' needs token-level features; the {self.adapter.name} text encoder is pooled")
        self.descriptions: dict[str, list[str]] = {}  # phrase -> k descriptions in use

    def _setup(self, cfg, expander) -> None:
        """What is built from the config alone (again in a process that unpickled this ActionGPT)."""
        self.cfg = cfg
        emb = cfg.embedding
        self.aggregator_name = emb.aggregator
        self.aggregator = get_registry().aggregator(emb.aggregator)
        try:
            self.cache = EmbeddingCache(emb.cache_size, emb.cache_device) if emb.cache else None
        except RuntimeError as exc:
            raise ActionGPTError(f"bad value for config key 'embedding.cache_device': {exc}") from None
        self.persistent = PersistentEmbeddings(persist_path(cfg)) if emb.persist else None
        self._expander = expander
        self._expander_given = expander is not None
        self._own_expanders = []
        self._offline_expander = None
        self.text_model_calls = 0  # batched calls of the original text model (for monitoring)

    # -- pickling (spawned workers: torch.multiprocessing.spawn, Lightning ddp_spawn) ------------
    def __getstate__(self):
        """What travels with a pickled model: the config (plain, no secrets), the descriptions in use,
        the adapter (installed or not) and a caller-supplied expander. Caches and store/LLM
        connections do not: the new process rebuilds them on first use."""
        expander = self._expander if self._expander_given else None
        if expander is not None:
            try:
                pickle.dumps(expander)
            except Exception as exc:  # noqa: BLE001 - whatever pickle refuses
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ActionGPTError(
                    f"cannot send this ActionGPT to another process: its expander ({type(expander).__name__}) cannot be "
                    f"pickled ({reason}); pass a picklable expander, or none and configure the backend instead "
                    "(e.g. backend=pack, pack.path=...)") from None
        return {"config": portable_config(self.cfg), "expander": expander, "model": self.model,
                "adapter": self.adapter, "descriptions": self.descriptions}

    def __setstate__(self, state):
        self._setup(load_config(**state["config"]), state["expander"])
        self.model, self.adapter, self.descriptions = state["model"], state["adapter"], state["descriptions"]

    # -- install ------------------------------------------------------------------------------
    @property
    def text_encoder(self):
        return self.adapter.text_encoder

    @property
    def installed(self) -> bool:
        return self.adapter.installed

    def install(self) -> "ActionGPT":
        """Put the adapter's declared replacements in place (see adapters/base.py)."""
        if self.adapter.installed:
            raise ActionGPTError(f"ActionGPT is already installed in this {type(self.model).__name__} model")
        self.adapter.install()
        return self

    def uninstall(self) -> None:
        if self.adapter.installed:
            self.adapter.uninstall()

    def __enter__(self):
        if not self.adapter.installed:
            self.install()
        return self

    def __exit__(self, *exc):
        self.uninstall()

    def close(self) -> None:
        """Close the expanders this object built (store connections, LLM clients)."""
        for expander in self._own_expanders:
            expander.close()
        self._own_expanders.clear()
        self._offline_expander = None
        if not self._expander_given:
            self._expander = None
        if self.persistent is not None:
            self.persistent.close()

    # -- descriptions ----------------------------------------------------------------------------
    def _build_expander(self, cfg):
        from .expander import Expander

        expander = Expander(cfg)
        self._own_expanders.append(expander)
        return expander

    @property
    def expander(self):
        if self._expander is None:
            self._expander = self._build_expander(self.cfg)
        return self._expander

    def _remember(self, found: dict, wanted) -> None:
        k = self.cfg.k
        for phrase in wanted:
            texts = [t for t in (found.get(phrase) or []) if t and t.strip()]
            if texts:
                self.descriptions[phrase] = list(texts[:k])
        missing = [p for p in wanted if p not in self.descriptions]
        if missing:
            raise MissingDescriptionsError(missing)

    def expand(self, labels) -> dict[str, list[str]]:
        """Descriptions of every label, asking the expander only for labels not known yet."""
        labels = list(dict.fromkeys([labels] if isinstance(labels, str) else labels))
        self.adapter.register_phrases(labels)
        todo = [p for p in labels if p not in self.descriptions]
        if todo:
            self._remember(self.expander.expand(todo), todo)
        return {p: self.descriptions[p] for p in labels}

    def prepare(self, labels) -> dict[str, list[str]]:
        """Expand and embed a whole vocabulary ahead of training (fills the embedding caches)."""
        out = self.expand(labels)
        if self.cache is not None or self.persistent is not None:
            self.adapter.prepare(list(out), self.cfg.embedding.batch_size)
        return out

    def descriptions_for(self, phrases) -> dict[str, list[str]]:
        """The policy for phrases met at call time that were never expanded: expand now, or strict."""
        missing = [p for p in phrases if p not in self.descriptions]
        if missing:
            if self.cfg.embedding.on_missing == "strict":
                self._remember(self._lookup_offline(missing), missing)
            else:
                self._remember(self.expander.expand(missing), missing)
        return {p: self.descriptions[p] for p in phrases}

    def _lookup_offline(self, phrases) -> dict:
        if self._expander_given:
            # A caller-supplied expander cannot be forced offline: only prepared phrases count.
            raise MissingDescriptionsError(phrases)
        if self._offline_expander is None:
            self._offline_expander = self._build_expander(OmegaConf.merge(self.cfg, {"store": {"offline": True}}))
        return self._offline_expander.run(phrases).descriptions  # the missing ones: MissingDescriptionsError

    # -- embedding -----------------------------------------------------------------------------
    def embed(self, phrases, encode, text_model, tag: str = "") -> list[tuple]:
        """Aggregated features per phrase: a list of (features, mask or None), one per phrase.

        ``encode(list_of_descriptions)`` runs the original text model and returns [N, D] or
        ([N, T, H], bool mask [N, T]). Phrases in the memory cache, then in the persistent one
        (``embedding.persist``), are served without running it; all the others are embedded in one
        call.
        """
        unique = list(dict.fromkeys(phrases))
        descs = self.descriptions_for(unique)
        frozen = not any(p.requires_grad for p in text_model.parameters())  # a trainable one changes every step
        cache = self.cache if frozen else None
        persistent = self.persistent if frozen else None
        keys = {}
        if cache is not None or persistent is not None:
            prefix = (model_fingerprint(text_model), self.adapter.name, tag, self.aggregator_name)
            keys = {p: prefix + (descriptions_key(descs[p]),) for p in unique}
        found = {}
        if cache is not None:
            for phrase in unique:
                hit = cache.get(keys[phrase])
                if hit is not None:
                    found[phrase] = hit
        todo = [p for p in unique if p not in found]
        if todo and persistent is not None:
            stored = persistent.get_many([keys[p] for p in todo], _device(text_model))
            for phrase in todo:
                value = stored.get(keys[phrase])
                if value is not None:
                    found[phrase] = value
                    if cache is not None:
                        cache.put(keys[phrase], value)
            todo = [p for p in todo if p not in found]
        if todo:
            with torch.no_grad() if frozen else nullcontext():
                computed = self._compute(todo, descs, encode)
            for phrase, value in computed.items():
                if cache is not None:
                    cache.put(keys[phrase], value)
                found[phrase] = value
            if persistent is not None:
                persistent.put_many({keys[p]: v for p, v in computed.items()})
        return [found[p] for p in phrases]

    def _compute(self, phrases, descs, encode) -> dict:
        flat, starts = [], []
        for phrase in phrases:
            starts.append(len(flat))
            flat += descs[phrase]
        out = encode(flat)
        self.text_model_calls += 1
        features, mask = out if isinstance(out, tuple) else (out, None)
        dtype = features.dtype
        groups: dict[int, list] = {}  # phrases with the same number of descriptions aggregate together
        for phrase, start in zip(phrases, starts):
            groups.setdefault(len(descs[phrase]), []).append((phrase, start))
        hook = get_plugin_manager().hook.aggregate_embeddings
        result = {}
        for k, members in groups.items():
            rows = torch.tensor([s + j for _, s in members for j in range(k)], device=features.device)
            f = features.index_select(0, rows).float()
            m = None if mask is None else mask.index_select(0, rows).bool()
            agg = hook(aggregator=self.aggregator, features=f, mask=m, k=k)
            if agg is None or agg[0].shape[0] != len(members):
                raise ActionGPTError(f"aggregator {self.aggregator_name!r} must return one row per phrase")
            agg_f, agg_m = agg
            for i, (phrase, _) in enumerate(members):
                if agg_m is None:
                    result[phrase] = (agg_f[i].to(dtype), None)
                else:
                    f_i, m_i = trim(agg_f[i], agg_m[i].bool())
                    result[phrase] = (f_i.to(dtype), m_i)
        return result

    def embed_tokens(self, phrases, encode, text_model, tag: str = ""):
        """Token-level drop-in output: features [n, T, H] and bool mask [n, T] on the text model's device."""
        items = self.embed(list(phrases), encode, text_model, tag)
        return pad_tokens(items, _device(text_model))

    def embed_pooled(self, phrases, encode, text_model, tag: str = ""):
        """Pooled drop-in output: [n, D] on the text model's device."""
        return stack_pooled(self.embed(list(phrases), encode, text_model, tag), _device(text_model))


def _device(module):
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def persist_path(cfg):
    """Where ``embedding.persist`` keeps features: ``embedding.persist_path`` or <cache dir>/embeddings.sqlite."""
    path = cfg.embedding.persist_path
    return path if path else default_cache_dir() / "embeddings.sqlite"
