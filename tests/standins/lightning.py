"""The slice of pytorch_lightning.LightningModule the upstream text encoders rely on.

``save_hyperparameters`` records the calling ``__init__``'s arguments in ``hparams``;
``load_from_checkpoint`` is a classmethod that builds a NEW instance from the saved
hyper-parameters and loads the state dict strictly (so instance-level patches do not carry over);
``dump_checkpoint`` writes the same two entries a Lightning checkpoint has.
"""
import inspect

import torch
from torch import nn


class AttributeDict(dict):
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


class LightningModule(nn.Module):
    def __init__(self):
        super().__init__()
        self._hparams = AttributeDict()

    @property
    def hparams(self):
        return self._hparams

    def save_hyperparameters(self, logger=False):
        frame = inspect.currentframe().f_back
        args = inspect.getargvalues(frame)
        values = {name: args.locals[name] for name in args.args if name != "self"}
        if args.keywords:
            values.update(args.locals[args.keywords])
        self._hparams.update(values)

    @property
    def device(self):
        return next(self.parameters()).device

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, strict=True, **overrides):
        checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
        model = cls(**{**checkpoint["hyper_parameters"], **overrides})
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model

    def dump_checkpoint(self, path):
        torch.save({"state_dict": self.state_dict(), "hyper_parameters": dict(self.hparams)}, path)
