"""Description packs: reading the release's gpt3_annotations.json and our JSONL + manifest packs.

A JSONL pack holds one JSON object per line with at least ``phrase`` and ``descriptions``; export
adds the store key and provenance so an import reproduces cache hits exactly. The manifest beside it
(``<pack>.manifest.json``) records the format, count and a sha256 of the JSONL file. Packs come from
other people: every row is validated on reading, and an import is all or nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .errors import ActionGPTError

FORMAT = "actiongpt-pack/1"


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ActionGPTError(f"pack file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ActionGPTError(f"pack file {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:  # a directory, no permission, ...
        raise ActionGPTError(f"cannot read pack file {path}: {exc.strerror}") from None


# Limits far above anything an expansion writes; past them a row is a mistake or an attack, not data.
MAX_PHRASE_CHARS = 2_000
MAX_DESCRIPTIONS = 1_024
MAX_DESCRIPTION_CHARS = 20_000
MAX_TEXT_CHARS = 100_000  # prompt, model and the other string fields
MAX_K = 128
_TEXT_FIELDS = ("backend", "model", "template", "prompt", "provenance")
_COUNT_FIELDS = ("prompt_tokens", "completion_tokens", "requests")
_HEX = set("0123456789abcdef")


def _kind(value) -> str:
    """A JSON value's type, in the words of the JSON text."""
    names = {type(None): "null", bool: "boolean", int: "int", float: "float", str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(value, what: str, limit: int, *, empty_ok: bool = False) -> str | None:
    """Why ``value`` is not an acceptable string, or None."""
    if not isinstance(value, str):
        return f"{what} must be a string (it is {_kind(value)})"
    if not empty_ok and not value.strip():
        return f"{what} is empty"
    if len(value) > limit:
        return f"{what} has {len(value):,} characters (limit {limit:,})"
    return None


def _check_descriptions(value, *, empty_ok: bool = False) -> str | None:
    if not isinstance(value, list):
        return f"descriptions must be a list of strings (it is {_kind(value)})"
    if len(value) > MAX_DESCRIPTIONS:
        return f"descriptions has {len(value):,} items (limit {MAX_DESCRIPTIONS:,})"
    for i, item in enumerate(value, 1):
        if not isinstance(item, str):
            return f"descriptions must be strings (item {i} is {_kind(item)})"
        problem = _check_text(item, f"description {i}", MAX_DESCRIPTION_CHARS, empty_ok=empty_ok)
        if problem:
            return problem
    return None


def row_problem(row) -> str | None:
    """Why a JSONL pack row cannot be used (the first reason), or None when it is valid.

    ``phrase`` and ``descriptions`` are required; the fields an export adds are checked when present.
    Unknown fields are allowed (backends add their identity, e.g. a server's endpoint).
    """
    if not isinstance(row, dict):
        return f"each line must be a JSON object (this one is {_kind(row)})"
    for name in ("phrase", "descriptions"):
        if name not in row:
            return f"'{name}' is missing"
    problem = _check_text(row["phrase"], "phrase", MAX_PHRASE_CHARS) or _check_descriptions(row["descriptions"])
    if problem:
        return problem
    if "key" in row:
        key = row["key"]
        if not isinstance(key, str) or len(key) != 64 or not set(key) <= _HEX:
            return f"key must be 64 lowercase hex characters (a store key), got {json.dumps(key)[:80]}"
    if "k" in row and not (_is_int(row["k"]) and 1 <= row["k"] <= MAX_K):
        return f"k must be a whole number from 1 to {MAX_K}, got {json.dumps(row['k'])[:40]}"
    for name in _COUNT_FIELDS:
        if name in row and not (_is_int(row[name]) and row[name] >= 0):
            return f"{name} must be a whole number >= 0, got {json.dumps(row[name])[:40]}"
    if "created_at" in row:
        value = row["created_at"]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11):
            return f"created_at must be a time in seconds since 1970, got {json.dumps(value)[:40]}"
    for name in _TEXT_FIELDS:
        if name in row:
            problem = _check_text(row[name], name, MAX_TEXT_CHARS, empty_ok=True)
            if problem:
                return problem
    if "template_version" in row:
        value = row["template_version"]
        if not (_is_int(value) or isinstance(value, str) and len(value) <= 100):
            return f"template_version must be a string or a whole number, got {_kind(value)}"
    if "params" in row and not isinstance(row["params"], dict):
        return f"params must be an object (it is {_kind(row['params'])})"
    return None


def read_pack(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL pack or of a release-style JSON object (label -> list of descriptions), every row
    validated: a bad one stops the read with the line (or label) and the reason."""
    path = Path(path).expanduser()
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("{") and not path.suffix == ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSONL whose first line is an object
        if isinstance(data, dict) and "phrase" not in data:
            return _release_rows(path, data)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ActionGPTError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ActionGPTError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
        problem = row_problem(row)
        if problem:
            raise ActionGPTError(f"{path}:{lineno}: {problem}")
        rows.append(row)
    return rows


def _release_rows(path: Path, data: dict) -> list[dict]:
    """The release's gpt3_annotations.json: label -> descriptions, used verbatim (empty strings included:
    reproducing the released models means feeding them exactly what they were trained on)."""
    rows = []
    for label, descriptions in data.items():
        problem = _check_text(label, "the label", MAX_PHRASE_CHARS) or _check_descriptions(descriptions, empty_ok=True)
        if problem:
            raise ActionGPTError(f"{path}: entry {label[:80]!r}: {problem}")
        rows.append({"phrase": label, "descriptions": descriptions, "provenance": f"pack:{path.name}"})
    return rows


def write_pack(path: str | os.PathLike, rows: list[dict], info: dict | None = None) -> Path:
    """Write JSONL + manifest atomically (temp file then rename), so a crash never leaves half a pack."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    manifest = {
        "format": FORMAT,
        "count": len(rows),
        "sha256": hashlib.sha256(body).hexdigest(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(info or {}),
    }
    for target, data in ((path, body), (manifest_path(path), (json.dumps(manifest, indent=2) + "\n").encode())):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return path


def verify_manifest(path: str | os.PathLike) -> dict | None:
    """Check a pack against its manifest, when there is one."""
    path = Path(path).expanduser()
    mpath = manifest_path(path)
    if not mpath.exists():
        return None
    try:
        manifest = json.loads(_read_text(mpath))
    except json.JSONDecodeError as exc:
        raise ActionGPTError(f"manifest {mpath} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(manifest, dict):
        raise ActionGPTError(f"manifest {mpath} must be a JSON object (it is {_kind(manifest)})")
    if manifest.get("format", FORMAT) != FORMAT:
        raise ActionGPTError(f"manifest {mpath}: format {json.dumps(manifest['format'])[:40]} is not {FORMAT}")
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise ActionGPTError(f"pack file not found: {path} (its manifest {mpath.name} is there)") from None
    if manifest.get("sha256") != digest:
        raise ActionGPTError(f"pack {path} does not match its manifest (sha256 differs): file changed or truncated")
    return manifest


def import_pack(store, path: str | os.PathLike) -> tuple[int, int]:
    """Import a pack with store keys into ``store``: all rows or none. Returns (added, total).

    Everything is checked first (manifest, every row); then the rows go in in one transaction, so a
    bad pack, a full disk or Ctrl-C leaves the store as it was. Keys already stored keep their rows.
    """
    path = Path(path).expanduser()
    manifest = verify_manifest(path)
    rows = read_pack(path)
    if manifest is not None and _is_int(manifest.get("count")) and manifest["count"] != len(rows):
        raise ActionGPTError(f"pack {path} has {len(rows)} rows but its manifest says {manifest['count']}")
    missing = next((i for i, row in enumerate(rows) if "key" not in row), None)
    if missing is not None:
        raise ActionGPTError(
            f"{path} has no store keys (row {missing + 1}; a release gpt3_annotations.json?): use it directly "
            f"with --backend pack --set pack.path={path}"
        )
    return store.put_rows(rows), len(rows)
