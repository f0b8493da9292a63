"""The persistent embedding cache (embedding.persist): SQLite on disk, lossless, shared by processes and runs."""
import multiprocessing
import sqlite3

import pytest
import torch

from actiongpt_plugin import ActionGPT
from actiongpt_plugin.embedding import PersistentEmbeddings
from actiongpt_plugin.errors import ActionGPTError
from standins import ScriptedExpander
from standins.temos import DistilbertEncoderBase, make_temos

PHRASES = ["jump", "walk forward", "wave both hands"]


from test_actiongpt import model, text_model_calls  # noqa: E402,F401 - the same TEMOS stand-in and call counter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tensors_round_trip_bit_for_bit(tmp_path, dtype):
    store = PersistentEmbeddings(tmp_path / "e.sqlite")
    features = torch.randn(5, 7).to(dtype)
    mask = torch.tensor([True, True, False, True, False])
    pooled = torch.randn(64).to(dtype)
    store.put_many({("a", "b"): (features, mask), ("c",): (pooled, None), ("empty",): (torch.zeros(0, 3, dtype=dtype), None)})
    got = PersistentEmbeddings(tmp_path / "e.sqlite").get_many([("a", "b"), ("c",), ("empty",), ("missing",)])
    assert set(got) == {("a", "b"), ("c",), ("empty",)}
    f, m = got[("a", "b")]
    assert f.dtype == dtype and torch.equal(f, features) and m.dtype == torch.bool and torch.equal(m, mask)
    assert torch.equal(got[("c",)][0], pooled) and got[("c",)][1] is None
    assert got[("empty",)][0].shape == (0, 3)


def test_second_run_skips_the_text_model_and_serves_identical_features(model, tmp_path):
    options = {"embedding.persist": True, "embedding.persist_path": str(tmp_path / "emb.sqlite")}
    first = ActionGPT(model, expander=ScriptedExpander(), **options)
    features, mask = first.text_encoder(PHRASES, return_mask=True)
    first.close()
    calls = text_model_calls(model)
    second = ActionGPT(model, expander=ScriptedExpander(), **options)  # a new run: empty memory cache
    again, again_mask = second.text_encoder(PHRASES, return_mask=True)
    assert calls == [] and second.text_model_calls == 0 and second.persistent.hits == 3
    assert torch.equal(again, features) and torch.equal(again_mask, mask)
    second.text_encoder(PHRASES)  # now from memory
    assert second.persistent.hits == 3 and second.cache.hits == 3
    second.close()


def test_keys_follow_weights_aggregator_and_descriptions(model, bert_dir, tmp_path):
    options = {"embedding.persist": True, "embedding.persist_path": str(tmp_path / "emb.sqlite")}
    ActionGPT(model, expander=ScriptedExpander(), **options).text_encoder(["jump"])
    other = ActionGPT(model, expander=ScriptedExpander(), **options, **{"embedding.aggregator": "masked-mean"})
    other.text_encoder(["jump"])
    assert other.text_model_calls == 1  # another aggregator: another key
    changed = ActionGPT(model, expander=ScriptedExpander(table={"jump": ["a person hops"] * 4}), **options)
    changed.text_encoder(["jump"])
    assert changed.text_model_calls == 1  # other descriptions: another key
    reloaded = make_temos(bert_dir)
    with torch.no_grad():
        for p in reloaded.textencoder.text_model.parameters():
            p.add_(0.25)
    fresh = ActionGPT(reloaded, expander=ScriptedExpander(), **options)
    features = fresh.text_encoder(["jump"])
    states, _ = DistilbertEncoderBase.get_last_hidden_state(reloaded.textencoder, ScriptedExpander().describe("jump"),
                                                            return_mask=True)
    assert fresh.text_model_calls == 1 and torch.allclose(features[0, : states.shape[1]], states.mean(0), atol=1e-5)
    assert len(PersistentEmbeddings(tmp_path / "emb.sqlite")) == 4


def test_memory_cache_off_reads_disk_every_time_and_trainable_text_models_skip_it(model, bert_dir, tmp_path):
    options = {"embedding.persist": True, "embedding.persist_path": str(tmp_path / "emb.sqlite"), "embedding.cache": False}
    ag = ActionGPT(model, expander=ScriptedExpander(), **options)
    ag.text_encoder(["jump"])
    ag.text_encoder(["jump"])
    assert ag.cache is None and ag.text_model_calls == 1 and ag.persistent.hits == 1
    trainable = make_temos(bert_dir)
    trainable.textencoder.text_model.requires_grad_(True)
    ag2 = ActionGPT(trainable, expander=ScriptedExpander(), **options)
    ag2.text_encoder(["jump"])
    ag2.text_encoder(["jump"])
    assert ag2.text_model_calls == 2 and ag2.persistent.hits == 0 and len(ag2.persistent) == 1


def test_default_path_is_in_the_cache_dir(model, isolated_home):
    ag = ActionGPT(model, expander=ScriptedExpander(), **{"embedding.persist": True})
    ag.text_encoder(["jump"])
    assert (isolated_home / "embeddings.sqlite").is_file()
    ag.close()


def test_unusable_path_is_a_one_line_error(model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ag = ActionGPT(model, expander=ScriptedExpander(),
                   **{"embedding.persist": True, "embedding.persist_path": str(blocker / "emb.sqlite")})
    with pytest.raises(ActionGPTError, match="cannot open the embedding cache .*embedding.persist_path") as info:
        ag.text_encoder(["jump"])
    assert "\n" not in str(info.value)


def _writer(path, worker, rounds):
    store = PersistentEmbeddings(path)
    for r in range(rounds):
        # Half the keys are shared by every writer (INSERT OR IGNORE), half are this writer's own.
        items = {("shared", str(r)): (torch.full((4, 8), float(r)), torch.ones(4, dtype=torch.bool)),
                 ("own", str(worker), str(r)): (torch.full((8,), float(worker)), None)}
        store.put_many(items)
        store.get_many(list(items))


def test_several_processes_write_at_once(tmp_path):
    path = tmp_path / "emb.sqlite"
    PersistentEmbeddings(path).put_many({("seed",): (torch.zeros(1), None)})
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert all(w.exitcode == 0 for w in workers)
    store = PersistentEmbeddings(path)
    assert len(store) == 1 + 40 + 4 * 40
    got = store.get_many([("shared", "7"), ("own", "3", "39")])
    assert torch.equal(got[("shared", "7")][0], torch.full((4, 8), 7.0)) and torch.equal(got[("own", "3", "39")][0], torch.full((8,), 3.0))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prepare_fills_the_disk_cache_even_without_the_memory_cache(model, tmp_path):
    options = {"embedding.persist": True, "embedding.persist_path": str(tmp_path / "emb.sqlite"), "embedding.cache": False}
    ActionGPT(model, expander=ScriptedExpander(), **options).prepare(PHRASES)
    assert len(PersistentEmbeddings(tmp_path / "emb.sqlite")) == 3
    later = ActionGPT(model, expander=ScriptedExpander(), **options)
    later.text_encoder(PHRASES)
    assert later.text_model_calls == 0


def _forked_reader(store, key, queue):
    queue.put(float(store.get_many([key])[key][0].sum()))
    store.close()  # must leave the parent's connection (and its WAL file) alone


def test_a_forked_worker_opens_its_own_connection(tmp_path):
    store = PersistentEmbeddings(tmp_path / "emb.sqlite")
    store.put_many({("a",): (torch.ones(3), None)})
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_forked_reader, args=(store, ("a",), queue))
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 0 and queue.get(timeout=10) == 3.0
    store.put_many({("b",): (torch.zeros(2), None)})  # the parent's connection still works
    assert len(store) == 2 and len(PersistentEmbeddings(tmp_path / "emb.sqlite")) == 2
