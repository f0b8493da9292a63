"""Run the benchmarks and write results.json plus results.md.

    python benchmarks/run.py                 # everything, about 6 minutes on 2 cores -> benchmarks/results/
    python benchmarks/run.py --quick         # smaller sizes, a smoke run -> benchmarks/results/tmp/
    python benchmarks/run.py --only store    # one benchmark; other entries of results.json are kept

Each benchmark runs in a fresh Python process (memory readings and thread settings stay its own).
Every figure is a ratio of two things measured in the same run; see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "expansion": "bench_expansion",
    "store": "bench_store",
    "training": "bench_training",
    "generation": "bench_generation",
    "single_flight": "bench_single_flight",
}


def child(name: str, quick: bool, out: Path) -> None:
    import importlib

    sys.path.insert(0, str(HERE))
    module = importlib.import_module(BENCHMARKS[name])
    start = time.perf_counter()
    result = module.run(quick=quick)
    result["seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(result, indent=2, default=str))


def run_child(name: str, quick: bool, home: str) -> dict:
    env = {**os.environ, "ACTIONGPT_HOME": home, "ACTIONGPT_DISABLE_EXTERNAL_PLUGINS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch on small CPUs; bench_generation drops it for llama.cpp
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ACTIONGPT_CONFIG", "OPENAI_LOG"):
        env.pop(var, None)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", str(out)]
        proc = subprocess.run(cmd + (["--quick"] if quick else []), env=env)
        if proc.returncode != 0:
            return {"name": name, "error": f"exited with status {proc.returncode} (see the output above)", "figures": []}
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for module in ("torch", "transformers", "openai"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), **versions,
            "load_average_at_start": round(os.getloadavg()[0], 2)}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    m = meta["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`{meta['command']}` on {meta['date']}: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, openai {m['openai']}."
        + f" Load average (1 min) {m['load_average_at_start']} at the start, {meta.get('load_average_at_end', '-')} at the end:"
        " other processes on the machine slow both sides of a ratio, not always equally."
        + (" **Quick mode: reduced sizes, smoke run only.**" if meta["quick"] else ""),
        "",
        "Every ratio is ours / the reference, both measured in the same run. How each is measured: docs/benchmarks.md.",
    ]
    for name in BENCHMARKS:
        result = results["benchmarks"].get(name)
        if result is None:
            continue
        lines += ["", f"## {result.get('title', name)}", ""]
        if result.get("error"):
            lines.append(f"Not measured: {result['error']}")
            continue
        lines += ["| figure | ours | reference | unit | reference is | ratio | goal | met |",
                  "|---|---:|---:|---|---|---:|---|---|"]
        for f in result["figures"]:
            ratio = "-" if f["ratio"] is None else f"{f['ratio']:.3g}x"
            lines.append(f"| {f['figure']} | {fmt(f['ours'])} | {fmt(f['reference'])} | {f['unit']} | {f['against']} "
                         f"| {ratio} | {f['goal'] or '-'} | {fmt(f['met'])} |")
        for note in result.get("notes", []):
            lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes; results go to benchmarks/results/tmp/")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only this one (repeatable)")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--child", choices=sorted(BENCHMARKS), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.child_out)
        return 0

    out_dir = args.out or (HERE / "results" / ("tmp" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "results.json"
    results = {"benchmarks": {}}
    if args.only and results_file.exists():
        results = json.loads(results_file.read_text())
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + "".join(f" --only {n}" for n in args.only or [])
    results["meta"] = {"command": command, "date": datetime.date.today().isoformat(), "quick": args.quick,
                       "machine": machine()}
    failed = False
    with tempfile.TemporaryDirectory() as home:
        for name in args.only or BENCHMARKS:
            print(f"== {name}", file=sys.stderr, flush=True)
            result = run_child(name, args.quick, home)
            results["benchmarks"][name] = result
            failed |= bool(result.get("error"))
            for f in result["figures"]:
                ratio = "" if f["ratio"] is None else f"  ratio {f['ratio']:.3g}x"
                print(f"   {f['figure']}: {fmt(f['ours'])} {f['unit']} vs {fmt(f['reference'])}{ratio}"
                      + (f"  goal {f['goal']}: {fmt(f['met'])}" if f["goal"] else ""), file=sys.stderr, flush=True)
    results["meta"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    results_file.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    print(f"wrote {results_file} and {out_dir / 'results.md'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
