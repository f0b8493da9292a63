"""The launchers in docs/ run as written: each fenced python block marked ``# runs: python FILE ARGS``
is saved as FILE in a folder laid out like the upstream checkout (tests/standins/checkouts) and run
there in a fresh Python process. The stand-in scripts print the text features the model used for
the first label, which must be ActionGPT's: the mean of that label's pack descriptions through the
model's own frozen text path (and not the plain label's). Hydra launchers need hydra-core (the
``test`` extra). With ACTIONGPT_UPSTREAM_TEMOS / _TEACH set, the TEMOS/TEACH launchers are also
checked against the real checkout's hydra entry point (``--cfg job``: config composition only).
MotionCLIP's, MDM's, T2M-GPT's and MoMask's launchers use runpy the same way, without hydra.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
from standins import require_clip_vocabulary, tiny_distilbert  # noqa: E402

require_clip_vocabulary()

from standins import clip  # noqa: E402
from standins.checkouts import LABELS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHECKOUTS = Path(__file__).resolve().parent / "standins" / "checkouts"
PAGES = {"temos.md": "temos", "teach.md": "teach", "motionclip.md": "motionclip", "mdm.md": "mdm",
         "t2mgpt.md": "t2mgpt", "momask.md": "momask"}
HYDRA = {"temos", "teach"}
MARKER = re.compile(r"^# runs: python (\S+)(.*)$", re.M)
# Four short descriptions per label (within MDM's 20 CLIP tokens: every model reads them whole).
PACK = {label: [f"a person {label}", f"the person will {label} now", f"someone does {label} slowly",
                f"a man tries to {label} twice"] for label in LABELS}


def launchers():
    found = []
    for page, checkout in PAGES.items():
        text = (DOCS / page).read_text()
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            match = MARKER.search(block)
            if match:
                found.append(pytest.param(checkout, block, match.group(1), match.group(2).split(), id=f"{page}:{match.group(1)}"))
    return found


def test_every_page_has_a_launcher_that_runs():
    assert {p.values[0] for p in launchers()} == set(PAGES.values())


def lay_out(checkout, tmp_path) -> Path:
    root = tmp_path / checkout
    shutil.copytree(CHECKOUTS / checkout, root, ignore=shutil.ignore_patterns("__pycache__"))
    if checkout in HYDRA:
        tiny_distilbert(root / "deps" / "distilbert-base-uncased")
    (root / "gpt3_annotations.json").write_text(json.dumps(PACK))
    (root / "captions.jsonl").write_text("".join(json.dumps({"phrase": p, "descriptions": d}) + "\n" for p, d in PACK.items()))
    (root / "texts.txt").write_text("\n".join(LABELS) + "\n")
    return root


def run(root, args, tmp_path):
    path = [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p),
           "ACTIONGPT_HOME": str(tmp_path / "home"), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    env.pop("ACTIONGPT_CONFIG", None)
    done = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def printed_features(out):
    line = next(line for line in out.splitlines() if line.startswith(f"features[{LABELS[0]}]:"))
    n, *values = line.split(":", 1)[1].split()
    return int(n), torch.tensor([float(v) for v in values])


def expected_features(checkout, root):
    """(ActionGPT's features, the plain label's), flattened, from the same stand-in model built here."""
    descriptions = PACK[LABELS[0]]
    if checkout in HYDRA:
        if checkout == "temos":
            from standins.temos import DistilbertEncoderBase, make_temos

            encoder = make_temos(str(root / "deps" / "distilbert-base-uncased")).textencoder
        else:
            from standins import teach
            from standins.teach import DistilbertEncoderBase, make_teach

            teach.ORIGINAL_CWD = str(root)
            try:
                encoder = make_teach("x/deps/distilbert-base-uncased").textencoder
            finally:
                teach.ORIGINAL_CWD = None
        states, _ = DistilbertEncoderBase.get_last_hidden_state(encoder, descriptions, return_mask=True)
        plain = DistilbertEncoderBase.get_last_hidden_state(encoder, LABELS[:1])[0]
        return states.shape[1], states.mean(0), plain
    if checkout == "mdm":
        from standins.mdm import make_mdm

        mdm = make_mdm()
        return 1, mdm.clip_encode_text(descriptions)[0].mean(0), mdm.clip_encode_text(LABELS[:1])[0]
    if checkout == "motionclip":
        from standins.motionclip import make_motionclip

        real = make_motionclip().clip_model
        return 1, real.encode_text(clip.tokenize(descriptions, truncate=True)).mean(0), real.encode_text(clip.tokenize(LABELS[:1]))[0]
    if checkout == "momask":
        from standins.momask import make_momask

        t2m, _ = make_momask()
        return 1, type(t2m).encode_text(t2m, descriptions).mean(0), type(t2m).encode_text(t2m, LABELS[:1])[0]
    real, _ = clip.load("ViT-B/32", jit=False)  # T2M-GPT's scripts: fp16 CLIP
    clip.model.convert_weights(real)
    with torch.no_grad():
        features = real.encode_text(clip.tokenize(descriptions, truncate=True)).float()
        plain = real.encode_text(clip.tokenize(LABELS[:1], truncate=True)).float()[0]
    return 1, features.mean(0), plain


@pytest.mark.parametrize("checkout, block, launcher, args", launchers())
def test_launcher_runs_as_documented(checkout, block, launcher, args, tmp_path):
    if checkout in HYDRA:
        pytest.importorskip("hydra")
    root = lay_out(checkout, tmp_path)
    (root / launcher).write_text(block)
    out = run(root, [launcher, *args], tmp_path)
    assert "step 1: loss" in out
    n, values = printed_features(out)
    want_n, want, plain = expected_features(checkout, root)
    want, plain = want.reshape(-1)[: len(values)], plain.reshape(-1)[: len(values)]
    atol = 5e-3 if checkout == "t2mgpt" else 1e-4  # T2M-GPT's scripts run CLIP in fp16
    assert n == want_n and torch.allclose(values, want, atol=atol), (values, want)
    assert not torch.allclose(values, plain, atol=1e-2)


@pytest.mark.upstream
@pytest.mark.parametrize("name", ["TEMOS", "TEACH"])
def test_hydra_launcher_finds_the_real_checkouts_configs(name, tmp_path):
    """Against a real checkout: the launcher reaches the upstream hydra entry point with its configs
    (``--cfg job`` composes the config without training: no data or weights needed)."""
    path = os.environ.get(f"ACTIONGPT_UPSTREAM_{name}")
    if not path:
        pytest.skip(f"set ACTIONGPT_UPSTREAM_{name} to a checkout to run this test")
    pytest.importorskip("hydra")
    page = "temos.md" if name == "TEMOS" else "teach.md"
    block, launcher, args = next((p.values[1], p.values[2], p.values[3]) for p in launchers()
                                 if p.id.startswith(page))
    root = tmp_path / "checkout"
    shutil.copytree(path, root, ignore=shutil.ignore_patterns(".git"))
    (root / launcher).write_text(block)
    out = run(root, [launcher, *args, "--cfg", "job"], tmp_path)
    assert "model:" in out


class MyModel(nn.Module):
    """The model of docs/adapters.md's "Writing an adapter" example: a frozen text model and encode_text."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.text_model = nn.Linear(3, 4).requires_grad_(False)

    def encode_text(self, texts):
        return self.text_model(torch.tensor([[len(t), t.count(" "), 1.0] for t in texts]))


def test_the_adapter_writing_example_works(monkeypatch):
    import pickle
    import types

    from actiongpt_plugin import ActionGPT
    from actiongpt_plugin.plugins import register_plugin, unregister_plugin
    from standins import ScriptedExpander

    block = next(b for b in re.findall(r"```python\n(.*?)```", (DOCS / "adapters.md").read_text(), re.S)
                 if "class MyModelAdapter" in b)
    plugin = types.ModuleType("docs_mymodel_adapter")
    exec(compile(block, "docs/adapters.md", "exec"), plugin.__dict__)
    monkeypatch.setitem(sys.modules, plugin.__name__, plugin)  # picklable, as an installed plugin is
    register_plugin(plugin, name="docs-mymodel")
    try:
        model, exp = MyModel(), ScriptedExpander()
        base = model.encode_text(["jump"])
        with ActionGPT(model, expander=exp) as ag:
            assert ag.adapter.name == "mymodel"
            out = model.encode_text(["jump"])
            copy = pickle.loads(pickle.dumps(model))
        assert torch.allclose(out[0], MyModel.encode_text(model, exp.describe("jump")).mean(0))
        assert torch.allclose(copy.encode_text(["jump"]), out) and torch.equal(model.encode_text(["jump"]), base)
    finally:
        unregister_plugin("docs-mymodel")
