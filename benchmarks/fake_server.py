"""tests/fake_openai.py served from its own process for the benchmarks.

Two additions over the test server: a legacy Completions call with a list of prompts gets n choices
per prompt and usage for all of them (the release sent its prompt k times in one call), and the
socket sends headers and body without waiting on Nagle's algorithm (production servers set
TCP_NODELAY; without it every reply can stall ~40 ms on delayed ACKs and flatter no one).

``--serial`` answers one request at a time (llama.cpp's server; see tests/fake_openai.py), and
``stats`` then also reports how many answers it computed for clients that had already given up.

Prints ``OPENAI_BASE_URL=...``, then answers one JSON line per stdin line: ``stats`` or ``reset``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fake_openai  # noqa: E402
from fake_openai import FakeOpenAI, _words  # noqa: E402



class ReleaseAwareFake(FakeOpenAI):
    def reply(self, path, body, fault=None):
        prompts = body.get("prompt")
        if path.endswith("/chat/completions") or not isinstance(prompts, list) or len(prompts) < 2:
            return super().reply(path, body, fault)
        n = int(body.get("n") or 1)
        merged = None
        for i, prompt in enumerate(prompts):
            one = super().reply(path, {**body, "prompt": prompt}, fault)
            for j, choice in enumerate(one["choices"]):
                choice["index"] = i * n + j
                choice["text"] = self.content(path, {**body, "prompt": prompt}, i * n + j)
            if merged is None:
                merged = one
                continue
            merged["choices"] += one["choices"]
            for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                merged["usage"][key] += one["usage"][key]
        merged["usage"]["completion_tokens"] = sum(_words(c["text"]) for c in merged["choices"])
        return merged


def stats(server: ReleaseAwareFake) -> dict:
    with server._lock:
        records = [r for r in server.requests if r["path"].endswith("completions")]
        max_in_flight = server.max_in_flight
        served, abandoned, in_flight = server.served, server.abandoned, server.in_flight
    prompt_words = 0
    prompts = []
    for r in records:
        body = r["body"] or {}
        if "messages" in body:
            prompt_words += sum(_words(m.get("content") or "") for m in body["messages"])
            prompts.append(body["messages"][-1].get("content", ""))
        else:
            p = body.get("prompt", "")
            p = p if isinstance(p, list) else [p]
            prompt_words += sum(_words(x) for x in p)
            prompts.append(p[0] if p else "")
    return {"requests": len(records), "prompt_words": prompt_words, "distinct_prompts": len(set(prompts)),
            "max_in_flight": max_in_flight, "served": served, "abandoned": abandoned,
            "in_flight": in_flight}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--serial", action="store_true", help="one request at a time; the others queue")
    args = parser.parse_args()
    with ReleaseAwareFake(latency=args.latency, serial=args.serial) as server:
        print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                server.reset()
                with server._lock:
                    server.max_in_flight = 0
                print(json.dumps({"ok": True}), flush=True)
            elif command == "stats":
                print(json.dumps(stats(server)), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)


if __name__ == "__main__":
    main()
