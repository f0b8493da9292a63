"""MDM (GuyTevet/motion-diffusion-model): the ``encode_text`` instance attribute (a built-in adapter plugin).

MDM sets ``self.encode_text = self.clip_encode_text`` (CLIP, the default) or ``self.bert_encode_text``
(DistilBERT) in ``__init__``; ``forward`` calls ``self.encode_text(y['text'])`` unless ``y['text_embed']``
is given, and sampling fills ``text_embed`` once per batch with ``model.encode_text(...)``. The
classifier-free-guidance wrapper (``ClassifierFreeSampleModel``) copies ``model.encode_text`` when it is
created. The adapter declares the instance attribute of the MDM (and of the wrapper, when the wrapper is
the model given to ActionGPT); wrappers created after install copy the replacement. No module,
parameter or buffer is added: ``load_model_wo_clip`` keeps working both ways.

- CLIP: ``[1, n, D]`` float. The descriptions go through the original ``clip_encode_text`` (its
  20-token cut on HumanML3D/KIT, 77 elsewhere); longer ones follow ``embedding.long_text``.
- BERT: ``([T, n, 768], mask [n, T] True = padding)``, aggregated at token level like TEMOS.
"""
from __future__ import annotations

import functools

from ..errors import ActionGPTError
from ..hookspecs import hookimpl
from .base import Adapter, InstanceAttribute
from .clip import CLIP_BUDGET, clip_budget, clip_module_for
from .temos import tokenizer_tag

SHORT_TEXT_DATASETS = ("humanml", "kit")  # MDM cuts CLIP input to 20 tokens on these
MDM_SHORT_BUDGET = 20


class MdmAdapter(Adapter):
    name = "mdm"
    granularity = "pooled"  # "tokens" in BERT mode (set per instance)

    @staticmethod
    def mdm_of(model):
        """The MDM: the model itself, or the one inside a ClassifierFreeSampleModel (``model.model``)."""
        inner = vars(model).get("_modules", {}).get("model") if hasattr(model, "__dict__") else None
        for candidate in (model, inner):
            if type(candidate).__name__ == "MDM" and "encode_text" in vars(candidate):
                return candidate
        return None

    @classmethod
    def matches(cls, model) -> bool:
        return cls.mdm_of(model) is not None

    def bind(self):
        self.mdm = self.mdm_of(self.model)
        if self.mdm is None:
            raise ActionGPTError(f"{type(self.model).__name__} is not a text-conditioned MDM (no encode_text)")
        self.wrapper = self.model if self.model is not self.mdm else None
        self.kind = getattr(self.mdm, "text_encoder_type", "clip")
        self.method = f"{self.kind}_encode_text"  # the upstream method encode_text points to
        if self.kind == "bert":
            self.granularity = "tokens"
            self.text_budget = None  # DistilBERT reads 512 tokens; MDM does not cut its input
            self.tag = f"mdm-bert:{tokenizer_tag(self.mdm.clip_model)}"
        elif self.kind == "clip":
            dataset = getattr(self.mdm, "dataset", None)
            tokens = MDM_SHORT_BUDGET if dataset in SHORT_TEXT_DATASETS else CLIP_BUDGET
            self.text_budget = clip_budget(self.ag.cfg, clip_module_for(self.mdm), tokens)
            self.tag = f"mdm-clip:{tokens}:{self.text_budget.tag}"
        else:
            raise ActionGPTError(f"unknown MDM text_encoder_type {self.kind!r}; the adapter knows clip and bert")

    def declare(self):
        # Plain instance attributes (what MDM itself sets), on the MDM and on a wrapper given to
        # ActionGPT: no module, parameter or buffer. Both call the MDM's original method.
        return [InstanceAttribute(owner, "encode_text", target=self.mdm, method=self.method) for owner in self.owners]

    @property
    def owners(self):
        return [self.mdm] + ([self.wrapper] if self.wrapper is not None else [])

    def text_model_of(self, mdm):
        return mdm.clip_model.text_model if self.kind == "bert" else mdm.clip_model

    def encoder_of(self, mdm):
        """encode(descriptions) with the ORIGINAL method of ``mdm``: [N, D], or ([N, T, H], mask True = real)."""
        original = getattr(type(mdm), self.method).__get__(mdm)
        if self.kind == "bert":
            def encode(descriptions):
                features, padding = original(descriptions)
                return features.permute(1, 0, 2), ~padding
            return encode
        return lambda descriptions: self.text_budget.encode(descriptions, lambda texts: original(texts)[0])

    def encode_for(self, mdm, raw_text):
        """The drop-in for ``mdm.encode_text(raw_text)``: same output types and shapes as upstream."""
        texts, encode, text_model = list(raw_text), self.encoder_of(mdm), self.text_model_of(mdm)
        if self.kind == "bert":
            features, mask = self.ag.embed_tokens(texts, encode, text_model, self.tag)
            return features.permute(1, 0, 2), ~mask
        return self.ag.embed_pooled(texts, encode, text_model, self.tag).float().unsqueeze(0)

    @property
    def text_encoder(self):
        return functools.partial(self.encode_for, self.mdm)

    def embedding_source(self):
        return self.encoder_of(self.mdm), self.text_model_of(self.mdm), self.tag


@hookimpl
def register_adapters(register):
    register(MdmAdapter)
