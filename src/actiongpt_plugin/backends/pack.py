"""`pack`: descriptions read from a file (our JSONL packs or the release's gpt3_annotations.json).

Reproduces the released models exactly: no LLM call, the stored descriptions verbatim.
"""
from dataclasses import dataclass
from typing import Optional

from ..errors import ActionGPTError
from ..options import option
from ..hookspecs import hookimpl
from ..packs import read_pack, verify_manifest
from .base import Backend, Completion


@dataclass
class PackOptions:
    """descriptions read from a file"""

    path: Optional[str] = option(None, "JSONL pack or the release's gpt3_annotations.json")


class PackBackend(Backend):
    name = "pack"
    batch_size = 1024
    paid = False  # the file is the cache

    def __init__(self, path):
        if not path:
            raise ActionGPTError("the pack backend needs a file: set pack.path (e.g. --set pack.path=gpt3_annotations.json)")
        verify_manifest(path)
        self.model = str(path)
        self.table: dict[str, list[str]] = {}
        for row in read_pack(path):
            self.table.setdefault(row["phrase"], []).extend(row["descriptions"])

    async def complete_batch(self, requests, k, params):
        # The release always uses exactly its 4 descriptions; with another k take the first k.
        return [
            Completion(texts=self.table[r.phrase][:k], requests=0) if r.phrase in self.table
            else Completion(texts=[], requests=0, error=f"not in the pack {self.model}")
            for r in requests
        ]


@hookimpl
def register_backends(register):
    register("pack", lambda cfg: PackBackend(cfg.pack.path), options=PackOptions,
             description="descriptions from a pack or the release's gpt3_annotations.json")
