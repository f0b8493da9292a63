"""Installed models in other processes: torch.multiprocessing.spawn for every adapter, and 2-rank DDP.

Spawned workers receive the model pickled (as Lightning's ddp_spawn and mp.spawn do): the ActionGPT
must travel with it, TEACH's class patch and T2M-GPT's clip.load patch must be back in the fresh
process, and the text path must really go through ActionGPT there (checked in the child against the
values the parent computed, and against the plain model's). Bounded: every wait has a deadline.
"""
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
from standins import require_clip_vocabulary  # noqa: E402

require_clip_vocabulary()

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from actiongpt_plugin import ActionGPT  # noqa: E402
from actiongpt_plugin.embedding import PersistentEmbeddings  # noqa: E402
from actiongpt_plugin.errors import ActionGPTError  # noqa: E402
from actiongpt_plugin.adapters.t2mgpt import T2MGPT  # noqa: E402
from standins import ScriptedExpander, clip, tiny_distilbert  # noqa: E402
from standins import teach as teach_standin  # noqa: E402
from standins.mdm import make_mdm  # noqa: E402
from standins.momask import make_momask  # noqa: E402
from standins.motionclip import make_motionclip  # noqa: E402
from standins.t2mgpt import make_transformer  # noqa: E402
from standins.teach import DistilbertEncoderBase as TeachBase  # noqa: E402
from standins.teach import make_teach  # noqa: E402
from standins.temos import DistilbertEncoderBase as TemosBase  # noqa: E402
from standins.temos import make_temos  # noqa: E402

LABELS = ["jump", "walk forward", "wave both hands"]
LIMIT_S = 150  # per spawned group: a hung worker fails the test instead of the run

# Each adapter's text path, as the upstream code calls it.
TEXT_PATHS = {
    "temos": lambda m, texts: m.textencoder.get_last_hidden_state(texts),
    "teach": lambda m, texts: m.textencoder.get_last_hidden_state(texts),
    "motionclip": lambda m, texts: m.clip_model.encode_text(clip.tokenize(texts)),
    "mdm": lambda m, texts: m.encode_text(texts),
    "t2mgpt": lambda m, texts: m.clip_features(texts),
    "momask": lambda m, texts: torch.cat([t.encode_text(texts) for t in m]),
}


def run_spawned(fn, args, nprocs):
    """torch.multiprocessing.spawn with a deadline; a worker's exception fails the test with its traceback."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + LIMIT_S
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"spawned workers did not finish within {LIMIT_S}s")


@pytest.fixture(scope="module")
def teach_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-root")
    tiny_distilbert(root / "deps" / "distilbert-base-uncased")
    return str(root)


def build_models(bert_dir, teach_root):
    teach_standin.ORIGINAL_CWD = teach_root
    clip_model, _ = clip.load("ViT-B/32", jit=False)
    clip_model.requires_grad_(False)
    return {
        "temos": make_temos(bert_dir).eval(),
        "teach": make_teach("/cluster/me/deps/distilbert-base-uncased").eval(),
        "motionclip": make_motionclip(),
        "mdm": make_mdm(),
        "t2mgpt": T2MGPT(make_transformer(), clip_model, clip=clip),
        "momask": make_momask(),
    }


def child_checks(rank, models, ags, expected, base, teach_root):
    """In a fresh process: every model still runs through its (carried) ActionGPT."""
    for name, model in models.items():
        ag = ags[name]
        assert ag.installed, name
        out = TEXT_PATHS[name](model, LABELS)
        want = expected[name]
        assert out.shape == want.shape and torch.allclose(out, want, atol=1e-5), f"{name}: not ActionGPT's features"
        plain = base[name]
        assert out.shape != plain.shape or not torch.allclose(out, plain, atol=1e-3), f"{name}: the plain model's"
        assert ag.text_model_calls >= 1, f"{name}: caches do not travel: the text model ran here"
    # The caller's expander travelled too: a new phrase is expanded in this process.
    TEXT_PATHS["temos"](models["temos"], ["kick"])
    assert ags["temos"]._expander.calls[-1] == ["kick"] and "kick" in ags["temos"].descriptions
    assert models["temos"].textencoder.get_last_hidden_state.adapter is ags["temos"].adapter
    # TEACH: the class patch is back in this fresh process, for instances made here too.
    assert TeachBase.__dict__["get_last_hidden_state"]._actiongpt_adapter is ags["teach"].adapter
    teach_standin.ORIGINAL_CWD = teach_root
    fresh = make_teach("/elsewhere/deps/distilbert-base-uncased").eval()  # same seed: same weights
    assert torch.allclose(fresh.textencoder.get_last_hidden_state(LABELS), expected["teach"], atol=1e-5)
    # T2M-GPT: clip.load hands out proxies again in this process (the scripts' global CLIP).
    loaded, _ = clip.load("ViT-B/32", jit=False)
    assert vars(loaded)["_actiongpt_adapter"] is ags["t2mgpt"].adapter
    # TEMOS's instance drop-in never touched the class.
    assert "_actiongpt_adapter" not in vars(TemosBase.__dict__["get_last_hidden_state"])


def test_spawned_worker_keeps_actiongpt_for_every_adapter(bert_dir, teach_root):
    models = build_models(bert_dir, teach_root)
    base = {name: TEXT_PATHS[name](m, LABELS) for name, m in models.items()}
    ags = {name: ActionGPT(m, expander=ScriptedExpander()) for name, m in models.items()}
    try:
        for ag in ags.values():
            ag.install()
        expected = {name: TEXT_PATHS[name](m, LABELS) for name, m in models.items()}
        run_spawned(child_checks, (models, ags, expected, base, teach_root), nprocs=1)
    finally:
        for ag in ags.values():
            ag.uninstall()
    assert "_actiongpt_adapter" not in vars(TeachBase.__dict__["get_last_hidden_state"])
    assert not hasattr(clip.load, "_actiongpt_adapter")
    assert all(ag._expander.calls == [LABELS] for ag in ags.values())  # "kick" was asked for in the child only


class Unpicklable:
    def __init__(self):
        self.lock = __import__("threading").Lock()

    def expand(self, phrases):
        return {p: [f"a person {p}"] for p in phrases}


def test_unpicklable_expander_is_a_one_line_error(bert_dir):
    import pickle

    model = make_temos(bert_dir)
    with ActionGPT(model, expander=Unpicklable()):
        with pytest.raises(ActionGPTError, match="expander .Unpicklable. cannot be pickled.*picklable expander") as info:
            pickle.dumps(model)
    assert "\n" not in str(info.value)


def test_pickled_config_carries_no_secret(bert_dir):
    import pickle

    secret = "sk-test-not-a-real-key-4242"
    model = make_temos(bert_dir)
    with ActionGPT(model, expander=ScriptedExpander(), **{"openai.api_key": secret, "k": 3}) as ag:
        data = pickle.dumps(model)
        copy = pickle.loads(data)
    assert secret.encode() not in data
    carried = copy.textencoder.get_last_hidden_state.adapter.ag
    assert carried.cfg.k == 3 and carried.cfg.openai.api_key is None and ag.cfg.openai.api_key == secret


# -- DDP: two gloo ranks on the TEMOS stand-in ------------------------------------------------------
PACK = {label: [f"a person {label}", f"the person {label} and then raises both arms",
                f"he {label} slowly", f"she {label} with both feet on the ground"]
        for label in ["jump", "walk forward", "wave both hands", "sit", "kick", "run"]}
RANK_TEXTS = [["jump", "walk forward"], ["sit", "kick"]]


class TemosStep(nn.Module):
    """A TEMOS training step as a module, so DistributedDataParallel sees it as the forward."""

    def __init__(self, temos):
        super().__init__()
        self.temos = temos

    def forward(self, batch):
        return self.temos.training_loss(batch)


def ddp_rank(rank, model, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ag = model.textencoder.get_last_hidden_state.adapter.ag
        torch.manual_seed(rank)
        texts = RANK_TEXTS[rank]
        batch = {"text": texts, "length": [5, 6], "features": torch.randn(2, 6, 6)}
        ddp = nn.parallel.DistributedDataParallel(TemosStep(model))
        model.train()
        ddp(batch).backward()
        grad = model.textencoder.projection[1].weight.grad
        grads = [torch.zeros_like(grad) for _ in range(2)]
        dist.all_gather(grads, grad)
        assert torch.equal(grads[0], grads[1]) and grad.abs().sum() > 0  # DDP averaged the ranks' gradients
        # The text path went through ActionGPT here: its descriptions, aggregated (paper: the mean).
        model.eval()
        features = model.textencoder.get_last_hidden_state(texts[:1])
        states, _ = TemosBase.get_last_hidden_state(model.textencoder, PACK[texts[0]], return_mask=True)
        assert torch.allclose(features[0, : states.shape[1]], states.mean(0), atol=1e-5)
        result = {"descriptions": sorted(ag.descriptions), "text_model_calls": ag.text_model_calls,
                  "disk_hits": ag.persistent.hits, "backend": ag.expander.backend_name}
        (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture
def loopback(monkeypatch):
    """Ranks talk over the loopback interface only (gloo would otherwise pick one by host name)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")


def test_two_rank_ddp_trains_through_actiongpt_with_one_shared_pack_and_disk_cache(bert_dir, tmp_path, loopback):
    pack = tmp_path / "gpt3_annotations.json"
    pack.write_text(json.dumps(PACK))
    options = {"backend": "pack", "pack.path": str(pack), "store.path": str(tmp_path / "store.sqlite"),
               "embedding.persist": True, "embedding.persist_path": str(tmp_path / "embeddings.sqlite")}
    model = make_temos(bert_dir)
    ag = ActionGPT(model, **options)
    with ag:
        run_spawned(ddp_rank, (model, str(tmp_path / "ddp-init"), tmp_path), nprocs=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, result in enumerate(results):
        assert set(RANK_TEXTS[rank]) <= set(result["descriptions"]) and result["backend"] == "pack"
    assert ag.descriptions == {}  # the parent expanded nothing: each rank did, from the pack
    # Both ranks wrote their phrases to the one disk cache at once; a later run reads them all back.
    assert len(PersistentEmbeddings(tmp_path / "embeddings.sqlite")) == 4
    second = ActionGPT(make_temos(bert_dir), **options)
    second.text_encoder(RANK_TEXTS[0] + RANK_TEXTS[1])
    assert second.text_model_calls == 0 and second.persistent.hits == 4
    second.close()
    ag.close()


def real_teach_child(rank, encoder, ag, expected):
    from teach.model.textencoder.distilbert import DistilbertEncoderBase

    assert DistilbertEncoderBase.__dict__["get_last_hidden_state"]._actiongpt_adapter is ag.adapter
    assert torch.allclose(encoder.get_last_hidden_state(LABELS), expected, atol=1e-5)


@pytest.mark.upstream
def test_real_teach_class_patch_in_a_spawned_worker(tmp_path, monkeypatch):
    """Opt-in (ACTIONGPT_UPSTREAM_TEACH, with pytorch_lightning and hydra-core): TEACH's own class."""
    path = os.environ.get("ACTIONGPT_UPSTREAM_TEACH")
    if not path:
        pytest.skip("set ACTIONGPT_UPSTREAM_TEACH to a checkout to run this test")
    pytest.importorskip("pytorch_lightning")
    hydra_utils = pytest.importorskip("hydra.utils")
    monkeypatch.syspath_prepend(path)  # spawned workers get the parent's sys.path
    from teach.model.textencoder.distilbert import DistilbertEncoderBase
    from teach.model.textencoder.text_hist import TextHist

    tiny_distilbert(tmp_path / "deps" / "distilbert-base-uncased")
    monkeypatch.setattr(hydra_utils, "get_original_cwd", lambda: str(tmp_path))
    torch.manual_seed(0)
    encoder = TextHist("/elsewhere/deps/distilbert-base-uncased", nfeats=6, latent_dim=16, ff_size=32, num_layers=1,
                       num_heads=2, dropout=0.0).eval()
    with ActionGPT(encoder, expander=ScriptedExpander()) as ag:
        expected = encoder.get_last_hidden_state(LABELS)
        run_spawned(real_teach_child, (encoder, ag, expected), nprocs=1)
    assert "_actiongpt_adapter" not in vars(DistilbertEncoderBase.__dict__["get_last_hidden_state"])


try:
    import pytorch_lightning as pl
except ImportError:
    pl = None

if pl is not None:
    class LightningTemosStep(pl.LightningModule):
        """A TEMOS training step as a LightningModule (module level: ddp_spawn pickles it)."""

        def __init__(self, temos, out):
            super().__init__()
            self.temos, self.out = temos, str(out)

        def training_step(self, batch, index):
            loss = self.temos.training_loss({"text": RANK_TEXTS[self.global_rank], "length": [5, 6],
                                             "features": batch[0].view(2, 6, 6)})
            ag = self.temos.textencoder.get_last_hidden_state.adapter.ag
            result = {"pid": os.getpid(), "installed": ag.installed, "calls": ag.text_model_calls,
                      "descriptions": sorted(ag.descriptions)}
            (Path(self.out) / f"rank{self.global_rank}.json").write_text(json.dumps(result))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-4)


def test_lightning_ddp_spawn_trains_through_actiongpt_in_every_rank(bert_dir, tmp_path, loopback):
    """Lightning's own ddp_spawn (pytorch-lightning is in the test extra; the package does not need it)."""
    if pl is None:
        pytest.skip("pytorch_lightning is not installed")

    pack = tmp_path / "gpt3_annotations.json"
    pack.write_text(json.dumps(PACK))
    model = make_temos(bert_dir)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 72)), batch_size=1)
    trainer = pl.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with ActionGPT(model, backend="pack", **{"pack.path": str(pack)}):
        trainer.fit(LightningTemosStep(model, tmp_path), data)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["pid"] != results[1]["pid"] != os.getpid()
    for rank, result in enumerate(results):
        assert result["installed"] and result["calls"] >= 1 and set(RANK_TEXTS[rank]) <= set(result["descriptions"])
