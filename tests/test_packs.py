"""Packs on real files and a real SQLite store: every row validated with its line, imports all or nothing."""
from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest

from actiongpt_plugin.cli import main as cli_main
from actiongpt_plugin.errors import ActionGPTError
from actiongpt_plugin.packs import FORMAT, import_pack, manifest_path, read_pack, verify_manifest, write_pack
from actiongpt_plugin.store import DescriptionStore

META = {"backend": "openai", "model": "gpt-4o-mini", "template": "actiongpt", "template_version": "1",
        "prompt": "Describe a person's body movements who is performing the action jump in details",
        "params": {"temperature": 0.5}, "k": 2}


def key_of(i) -> str:
    return hashlib.sha256(f"row {i}".encode()).hexdigest()


def good_row(i: int) -> dict:
    return {"phrase": f"action {i}", "descriptions": [f"The person moves {i}.", f"They step {i}."], "key": key_of(i),
            "backend": "openai", "model": "gpt-4o-mini", "template": "actiongpt", "template_version": "1",
            "prompt": f"describe action {i}", "params": {"temperature": 0.5}, "k": 2, "prompt_tokens": 10,
            "completion_tokens": 20, "requests": 1, "provenance": "openai:gpt-4o-mini", "created_at": 1_700_000_000.5}


def snapshot(path) -> list:
    """Everything in the store's descriptions table, read by an independent connection."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM descriptions ORDER BY key").fetchall()
    finally:
        conn.close()


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "store.sqlite"
    with DescriptionStore(path) as store:  # rows already there, which a failed import must leave as they are
        store.append(key_of("existing"), phrase="wave", descriptions=["The person waves."], raw={}, meta=META)
        store.append(key_of(1), phrase="action 1", descriptions=["kept, not replaced"], raw={}, meta=META)
    return path


BAD_ROWS = [
    ({"descriptions": [1, None, {"a": 1}, 4.5]}, "descriptions must be strings (item 1 is int)"),
    ({"descriptions": ["fine", None]}, "descriptions must be strings (item 2 is null)"),
    ({"descriptions": ["fine", {"a": 1}]}, "descriptions must be strings (item 2 is object)"),
    ({"descriptions": ["fine", "   "]}, "description 2 is empty"),
    ({"descriptions": "The person jumps."}, "descriptions must be a list of strings (it is string)"),
    ({"descriptions": ["x"] * 1025}, "descriptions has 1,025 items (limit 1,024)"),
    ({"descriptions": ["x" * 20_001]}, "description 1 has 20,001 characters (limit 20,000)"),
    ({"phrase": ""}, "phrase is empty"),
    ({"phrase": 7}, "phrase must be a string (it is int)"),
    ({"phrase": "p" * 2001}, "phrase has 2,001 characters (limit 2,000)"),
    ({"k": "abc"}, 'k must be a whole number from 1 to 128, got "abc"'),
    ({"k": 0}, "k must be a whole number from 1 to 128, got 0"),
    ({"k": 129}, "k must be a whole number from 1 to 128, got 129"),
    ({"k": 4.0}, "k must be a whole number from 1 to 128, got 4.0"),
    ({"k": True}, "k must be a whole number from 1 to 128, got true"),
    ({"key": "abc"}, 'key must be 64 lowercase hex characters (a store key), got "abc"'),
    ({"key": "G" * 64}, "key must be 64 lowercase hex characters"),
    ({"prompt_tokens": -1}, "prompt_tokens must be a whole number >= 0, got -1"),
    ({"requests": 1.5}, "requests must be a whole number >= 0, got 1.5"),
    ({"created_at": "yesterday"}, 'created_at must be a time in seconds since 1970, got "yesterday"'),
    ({"params": [0.5]}, "params must be an object (it is list)"),
    ({"model": 4}, "model must be a string (it is int)"),
    ({"template_version": [1]}, "template_version must be a string or a whole number, got list"),
]


def write_with_bad_line(path, change: dict | None, *, line: str | None = None):
    """A pack (with a correct manifest) whose 3rd line is bad: good rows come before and after it."""
    rows = [good_row(1), good_row(2), {**good_row(3), **(change or {})}, good_row(4)]
    write_pack(path, rows)
    if line is not None:  # a raw line instead: rewrite the file and its manifest's digest
        lines = path.read_text().splitlines(keepends=True)
        lines[2] = line + "\n"
        path.write_text("".join(lines))
        manifest = json.loads(manifest_path(path).read_text())
        manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest_path(path).write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize("change, message", BAD_ROWS, ids=[m.split(" (")[0][:40] for _, m in BAD_ROWS])
def test_bad_row_is_named_by_line_and_the_store_is_unchanged(tmp_path, store_path, change, message):
    pack = write_with_bad_line(tmp_path / "bad.jsonl", change)
    before = snapshot(store_path)
    with DescriptionStore(store_path) as store, pytest.raises(ActionGPTError) as err:
        import_pack(store, pack)
    assert str(err.value).startswith(f"{pack}:3: {message}") and "\n" not in str(err.value)
    assert snapshot(store_path) == before


@pytest.mark.parametrize("line, message", [
    ('{"phrase": "jump", "descriptions": [', "not valid JSON"),
    ("[1, 2]", "each line must be a JSON object (this one is list)"),
    ('"jump"', "each line must be a JSON object (this one is string)"),
    ('{"phrase": "jump"}', "'descriptions' is missing"),
    ('{"descriptions": ["x"]}', "'phrase' is missing"),
    ("[" * 100_000, "not valid JSON"),
])
def test_bad_line_is_named_and_the_store_is_unchanged(tmp_path, store_path, line, message):
    pack = write_with_bad_line(tmp_path / "bad.jsonl", None, line=line)
    before = snapshot(store_path)
    with DescriptionStore(store_path) as store, pytest.raises(ActionGPTError) as err:
        import_pack(store, pack)
    assert str(err.value).startswith(f"{pack}:3: {message}")
    assert snapshot(store_path) == before


def test_cli_reports_a_bad_row_as_one_line(tmp_path, store_path, capsys):
    pack = write_with_bad_line(tmp_path / "bad.jsonl", {"descriptions": [1, None, {"a": 1}, 4.5]})
    before = snapshot(store_path)
    with pytest.raises(SystemExit) as done:
        cli_main(["pack", "import", str(pack), "--set", f"store.path={store_path}"])
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert err == f"actiongpt: error: {pack}:3: descriptions must be strings (item 1 is int)\n"
    assert snapshot(store_path) == before


def test_good_pack_imports_in_one_transaction(tmp_path, store_path):
    pack = write_pack(tmp_path / "good.jsonl", [good_row(i) for i in range(1, 6)])
    with DescriptionStore(store_path) as store:
        statements = []
        store._conn.set_trace_callback(statements.append)
        assert import_pack(store, pack) == (4, 5)  # key_of(1) was there: kept as it was
        store._conn.set_trace_callback(None)
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        assert sum(s.startswith("INSERT OR IGNORE INTO descriptions") for s in statements) == 5
        rows = {row["key"]: row for row in store.rows()}
        assert rows[key_of(1)]["descriptions"] == ["kept, not replaced"]
        for i in range(2, 6):
            want = good_row(i)
            got = rows[key_of(i)]
            assert {name: got[name] for name in want if name != "requests"} == {
                name: value for name, value in want.items() if name != "requests"}
            assert got["requests"] == 0  # nothing was paid here
        assert import_pack(store, pack) == (0, 5)  # again: nothing new


def test_put_rows_is_all_or_nothing(store_path):
    """Interrupted half-way (Ctrl-C, a full disk): no row of the batch stays."""
    def rows():
        yield good_row(10)
        yield good_row(11)
        raise KeyboardInterrupt

    before = snapshot(store_path)
    with DescriptionStore(store_path) as store, pytest.raises(KeyboardInterrupt):
        store.put_rows(rows())
    assert snapshot(store_path) == before


def test_exported_store_round_trips_through_a_pack(tmp_path, store_path):
    with DescriptionStore(store_path) as store:
        exported = list(store.rows())
    pack = write_pack(tmp_path / "export.jsonl", exported)
    target = tmp_path / "other.sqlite"
    with DescriptionStore(target) as store:
        assert import_pack(store, pack) == (2, 2)
        assert [{**row, "requests": 0} for row in exported] == [{**row, "requests": 0} for row in store.rows()]


def test_import_into_a_read_only_store_is_refused(tmp_path, store_path):
    pack = write_pack(tmp_path / "good.jsonl", [good_row(7)])
    before = snapshot(store_path)
    with DescriptionStore(store_path, readonly=True) as store, pytest.raises(ActionGPTError, match="is read-only"):
        import_pack(store, pack)
    assert snapshot(store_path) == before


def test_pack_without_keys_is_refused_before_anything_changes(tmp_path, store_path):
    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps({"walk forward": ["a.", "b.", "c.", "d."]}))
    before = snapshot(store_path)
    with DescriptionStore(store_path) as store, pytest.raises(ActionGPTError, match="has no store keys"):
        import_pack(store, release)
    assert snapshot(store_path) == before


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object (it is list)"),
    ('{"format": "actiongpt-pack/9", "sha256": ""}', 'format "actiongpt-pack/9" is not actiongpt-pack/1'),
])
def test_bad_manifest_is_a_one_line_error(tmp_path, text, message):
    pack = write_pack(tmp_path / "p.jsonl", [good_row(1)])
    manifest_path(pack).write_text(text)
    with pytest.raises(ActionGPTError) as err:
        verify_manifest(pack)
    assert message in str(err.value) and str(manifest_path(pack)) in str(err.value)


def test_manifest_count_must_match(tmp_path, store_path):
    pack = write_pack(tmp_path / "p.jsonl", [good_row(1), good_row(2)])
    manifest = json.loads(manifest_path(pack).read_text())
    manifest_path(pack).write_text(json.dumps({**manifest, "count": 3}))
    with DescriptionStore(store_path) as store, pytest.raises(ActionGPTError, match="has 2 rows but its manifest says 3"):
        import_pack(store, pack)


def test_manifest_without_its_pack(tmp_path):
    pack = write_pack(tmp_path / "p.jsonl", [good_row(1)])
    pack.unlink()
    with pytest.raises(ActionGPTError, match="pack file not found"):
        verify_manifest(pack)
    assert json.loads(manifest_path(pack).read_text())["format"] == FORMAT


@pytest.mark.parametrize("data, message", [
    ({"walk": ["a.", 3]}, "entry 'walk': descriptions must be strings (item 2 is int)"),
    ({"walk": "a. b."}, "entry 'walk': descriptions must be a list of strings (it is string)"),
    ({"": ["a."]}, "entry '': the label is empty"),
    ({"walk": ["a."] * 1025}, "entry 'walk': descriptions has 1,025 items"),
])
def test_release_file_entries_are_validated_by_label(tmp_path, data, message):
    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps(data))
    with pytest.raises(ActionGPTError) as err:
        read_pack(release)
    assert str(err.value).startswith(f"{release}: {message}")


def test_release_file_is_read_verbatim(tmp_path):
    release = tmp_path / "gpt3_annotations.json"
    release.write_text(json.dumps({"walk": ["a.", "", "c.", "d."], "sit": ["e.", "f.", "g.", "h."]}))
    assert read_pack(release) == [
        {"phrase": "walk", "descriptions": ["a.", "", "c.", "d."], "provenance": "pack:gpt3_annotations.json"},
        {"phrase": "sit", "descriptions": ["e.", "f.", "g.", "h."], "provenance": "pack:gpt3_annotations.json"},
    ]
