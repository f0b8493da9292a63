"""Description packs: reading the release's gpt3_annotations.json and our JSONL + manifest packs.

A JSONL pack holds one JSON object per line with at least ``phrase`` and ``descriptions``; export
adds the store key and provenance so an import reproduces cache hits exactly. The manifest beside it
(``<pack>.manifest.json``) records the format, count and a sha256 of the JSONL file.
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


def read_pack(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL pack or of a release-style JSON object (label -> list of descriptions)."""
    path = Path(path).expanduser()
    text = _read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("{") and not path.suffix == ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSONL whose first line is an object
        if isinstance(data, dict) and "phrase" not in data:
            rows = []
            for label, descriptions in data.items():
                if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
                    raise ActionGPTError(f"{path}: entry {label!r} must map to a list of strings")
                rows.append({"phrase": label, "descriptions": descriptions, "provenance": f"pack:{path.name}"})
            return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ActionGPTError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("phrase"), str) or not isinstance(row.get("descriptions"), list):
            raise ActionGPTError(f"{path}:{lineno}: each line needs 'phrase' (string) and 'descriptions' (list)")
        rows.append(row)
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
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if manifest.get("sha256") != digest:
        raise ActionGPTError(f"pack {path} does not match its manifest (sha256 differs): file changed or truncated")
    return manifest
