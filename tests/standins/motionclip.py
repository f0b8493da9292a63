"""MotionCLIP stand-in (interface of GuyTevet/MotionCLIP 8eae36d, MIT).

``MOTIONCLIP(encoder, decoder, device, lambdas, latent_dim, outputxyz, pose_rep, glob, glob_rot,
translation, jointstype, vertstrans, clip_lambdas={}, **kwargs)`` stores ``kwargs['clip_model']`` as
``self.clip_model`` (asserted frozen unless ``clip_training``); text reaches CLIP only as
``self.clip_model.encode_text(clip.tokenize(texts))`` (training: ``compute_clip_losses`` on
``batch['clip_text']``; inference: features passed to ``generate(..., is_clip_features=True)``).
SMPL-based ``Rotation2xyz`` is left out (``outputxyz`` must be False). Motion encoder and decoder
are tiny stand-ins with the same batch-dict interface. ``load_model_wo_clip`` and
``state_dict_wo_clip`` are MotionCLIP's checkpoint rules (clip_model.* is never saved).
"""
import torch
from torch import nn

from . import clip


class Encoder(nn.Module):
    """batch['x'] [bs, njoints, nfeats, nframes] + mask -> {'mu': [bs, latent]}."""

    def __init__(self, njoints, nfeats, latent_dim):
        super().__init__()
        self.proj = nn.Linear(njoints * nfeats, latent_dim)

    def forward(self, batch):
        x, mask = batch["x"], batch["mask"]
        frames = x.flatten(1, 2).permute(0, 2, 1)  # [bs, nframes, njoints*nfeats]
        w = mask[..., None].float()
        return {"mu": self.proj((frames * w).sum(1) / w.sum(1).clamp_min(1))}


class Decoder(nn.Module):
    """batch['z'] [bs, latent] + mask [bs, nframes] -> {'output': [bs, njoints, nfeats, nframes]}."""

    def __init__(self, njoints, nfeats, latent_dim, max_frames=64):
        super().__init__()
        self.njoints, self.nfeats = njoints, nfeats
        self.proj = nn.Linear(latent_dim, njoints * nfeats)
        self.time = nn.Parameter(torch.randn(max_frames, njoints * nfeats) * 0.1)

    def forward(self, batch):
        z, mask = batch["z"], batch["mask"]
        out = (self.proj(z)[:, None] + self.time[: mask.shape[1]][None]) * mask[..., None]
        return {"output": out.reshape(z.shape[0], mask.shape[1], self.njoints, self.nfeats).permute(0, 2, 3, 1)}


class MOTIONCLIP(nn.Module):
    def __init__(self, encoder, decoder, device, lambdas, latent_dim, outputxyz, pose_rep, glob, glob_rot,
                 translation, jointstype, vertstrans, clip_lambdas={}, **kwargs):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.outputxyz = outputxyz
        assert not outputxyz, "the stand-in has no SMPL layer"
        self.lambdas, self.clip_lambdas = lambdas, clip_lambdas
        self.latent_dim, self.pose_rep, self.device = latent_dim, pose_rep, device
        self.glob, self.glob_rot, self.translation = glob, glob_rot, translation
        self.jointstype, self.vertstrans = jointstype, vertstrans
        self.clip_model = kwargs["clip_model"]
        self.clip_training = kwargs.get("clip_training", False)
        if self.clip_model is not None and not self.clip_training:
            assert self.clip_model.training == False  # noqa: E712 - frozen CLIP
        self.losses = list(self.lambdas) + ["mixed"]

    @staticmethod
    def lengths_to_mask(lengths):
        return torch.arange(int(max(lengths)), device=lengths.device)[None] < lengths[:, None]

    def forward(self, batch):
        batch.update(self.encoder(batch))
        batch["z"] = batch["mu"]
        batch.update(self.decoder(batch))
        return batch

    def compute_clip_losses(self, batch):
        """Text branch: cosine / mse between the (frozen) CLIP text features and the motion latent."""
        total, losses = 0.0, {}
        for domain, weights in self.clip_lambdas.items():
            if domain != "text" or not weights:
                continue
            with torch.no_grad():
                tokens = clip.tokenize(batch["clip_text"]).to(self.device)
                features = self.clip_model.encode_text(tokens).float()
            features_norm = features / features.norm(dim=-1, keepdim=True)
            z_norm = batch["z"] / batch["z"].norm(dim=-1, keepdim=True)
            if "cosine" in weights:
                loss = (1 - nn.functional.cosine_similarity(features_norm, z_norm)).mean()
                losses["text_cosine"] = loss.item()
                total = total + weights["cosine"] * loss
            if "mse" in weights:
                loss = nn.functional.mse_loss(features, batch["z"])
                losses["text_mse"] = loss.item()
                total = total + weights["mse"] * loss
        return total, losses

    def compute_loss(self, batch):
        rc = nn.functional.mse_loss(batch["output"] * batch["mask"][:, None, None], batch["x"] * batch["mask"][:, None, None])
        clip_loss, losses = self.compute_clip_losses(batch)
        losses["rc"] = rc.item()
        return self.lambdas.get("rc", 1.0) * rc + clip_loss, losses

    def generate(self, classes, durations, nspa=1, is_amass=False, is_clip_features=False, textual_labels=None):
        clip_dim = self.clip_model.ln_final.normalized_shape[0]
        assert is_clip_features and classes.dim() == 3 and classes.shape[-1] == clip_dim
        features = classes.reshape(-1, clip_dim)
        lengths = durations.to(features.device).reshape(features.shape[0])
        mask = self.lengths_to_mask(lengths)
        batch = {"z": features, "y": features, "mask": mask, "lengths": lengths}
        batch.update(self.decoder(batch))
        return batch


def text_to_clip_features(model, texts):
    """MotionCLIP's inference path (visualize.py): tokenize, encode, .float(), [1, n, D]."""
    return model.clip_model.encode_text(clip.tokenize(texts).to(model.device)).float().unsqueeze(0)


def state_dict_wo_clip(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("clip_model.")}


def load_model_wo_clip(model, state_dict):
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert len(unexpected) == 0
    assert all(k.startswith("clip_model.") for k in missing)


def make_motionclip(clip_model=None, seed=0, njoints=4, nfeats=6) -> MOTIONCLIP:
    if clip_model is None:
        clip_model, _ = clip.load("ViT-B/32", jit=False, seed=seed)
        for p in clip_model.parameters():
            p.requires_grad = False
    dim = clip_model.ln_final.normalized_shape[0]
    torch.manual_seed(seed + 1)
    return MOTIONCLIP(Encoder(njoints, nfeats, dim), Decoder(njoints, nfeats, dim), device="cpu", lambdas={"rc": 1.0},
                      latent_dim=dim, outputxyz=False, pose_rep="rot6d", glob=True, glob_rot=[3.14, 0, 0],
                      translation=True, jointstype="vertices", vertstrans=False,
                      clip_lambdas={"text": {"cosine": 1.0}}, clip_model=clip_model)
