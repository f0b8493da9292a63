"""The `actiongpt` command. Every user error ends as one line on stderr and a non-zero exit."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError
from omegaconf import OmegaConf

from .config import load_config, masked, store_path
from .errors import ActionGPTError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Expand action phrases into LLM-written body-movement descriptions (Action-GPT).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
pack_app = typer.Typer(no_args_is_help=True, help="Export and import description packs (JSONL + manifest).")
store_app = typer.Typer(no_args_is_help=True, help="The SQLite description store.")
app.add_typer(config_app, name="config")
app.add_typer(pack_app, name="pack")
app.add_typer(store_app, name="store")

@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log retries and progress to stderr.")):
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, format="actiongpt: %(message)s")


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: $ACTIONGPT_CONFIG).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config key: --set sampling.temperature=0.7 (repeatable).")
EXIT_USAGE, EXIT_FAILURES, EXIT_INTERRUPTED = 2, 1, 130
INTERRUPTED = "interrupted: everything expanded so far is in the store; run the same command again to resume"


def _err(message: str) -> None:
    typer.echo(f"actiongpt: error: {message}", err=True)


def _config(config: Optional[Path], sets: Optional[List[str]], **values):
    return load_config(config, list(sets or ()), **{k: v for k, v in values.items() if v is not None})


def read_phrase_file(path: Path) -> list[str]:
    """One phrase per line; blank lines skipped; the file must be UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ActionGPTError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ActionGPTError(f"{path} is a directory, not a file of phrases") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ActionGPTError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@app.command()
def expand(
    phrases: Optional[List[str]] = typer.Argument(None, help="Action phrases, e.g. jump 'pick up'."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="A file of phrases, one per line."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results as a pack (JSONL + manifest)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    k: Optional[int] = typer.Option(None, "-k", help="Descriptions per phrase (default 4)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="openai, embedded, transformers, pack, identity, ..."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name or local path for the backend."),
    template: Optional[str] = typer.Option(None, "--template", "-t", help="Prompt template (see `actiongpt templates`)."),
    offline: bool = typer.Option(False, "--offline", help="Use stored descriptions only; fail listing any missing."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight at once."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar for --file."),
    batch: bool = typer.Option(False, "--batch", help="Use the OpenAI Batch API (half price, within 24 h); rerun to resume."),
    poll_interval: float = typer.Option(30.0, "--poll-interval", help="Seconds between batch status checks (--batch)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Print k descriptions for each phrase (or expand a whole --file into the store and --out)."""
    from .expander import Expander, normalise_phrase

    todo = list(phrases or [])
    if file is not None:
        todo += read_phrase_file(file)
    if not todo:
        raise ActionGPTError("nothing to expand: give a phrase (actiongpt expand \"jump\") or --file labels.txt")
    cfg = _config(config, sets, k=k, backend=backend, model=model, template=template,
                  **{"store.offline": True if offline else None, "expand.concurrency": concurrency})
    # Every phrase valid before any is paid for; the distinct ones size the progress bar.
    distinct = {normalise_phrase(phrase, cfg.expand.max_phrase_chars) for phrase in todo}
    with Expander(cfg) as expander:
        if batch:
            from .batch import BatchRunner

            runner = BatchRunner(expander, poll_interval=poll_interval, log=lambda line: typer.echo(line, err=True))
            result = runner.run(todo)
        else:
            result = _run_with_progress(expander, todo, len(distinct), show=progress and file is not None)
        if out is not None:
            from .packs import write_pack

            write_pack(out, result.rows, {"config": OmegaConf.to_container(masked(expander.cfg))})
    if as_json:
        typer.echo(json.dumps(result.descriptions, ensure_ascii=False, indent=2))
    elif out is None or not file:
        for phrase, descriptions in result.descriptions.items():
            typer.echo(phrase)
            for i, text in enumerate(descriptions, 1):
                typer.echo(f"  {i}. {text}")
    s = result.stats
    if file is not None or s.failures:
        typer.echo(
            f"{s.phrases} phrases: {s.cache_hits} from the store, {s.expanded} expanded, {len(s.failures)} failed; "
            f"{s.requests} requests, {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens"
            + (f"; wrote {out}" if out else ""),
            err=True,
        )
    for phrase, reason in list(s.failures.items())[:10]:
        typer.echo(f"  failed: {phrase!r}: {reason}", err=True)
    if s.failures:
        raise typer.Exit(EXIT_FAILURES)


def _run_with_progress(expander, phrases, total: int, show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        return expander.run(phrases)
    columns = (TextColumn("expanding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("expand", total=total)
        return expander.run(phrases, progress=lambda phrase, ok: bar.advance(task))


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List loaded plugins, where they come from and the hooks they implement."""
    from .plugins import DISABLE_EXTERNAL_ENV, list_plugins

    rows = list_plugins()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in sorted(rows, key=lambda r: r["name"]):
        typer.echo(f"{row['name']:<24} {row['distribution'] or '-':<20} {row['source']}  [{', '.join(row['hooks'])}]")
    typer.echo(f"(set {DISABLE_EXTERNAL_ENV}=1 to load only built-in plugins)", err=True)


@app.command()
def templates():
    """List prompt templates (name@version and text)."""
    from .plugins import get_registry

    reg = get_registry()
    for (name, version), template in sorted(reg.template_versions.items()):
        typer.echo(f"{name}@{version}: {template.description}\n    {template.text}")


@config_app.command("show")
def config_show(config: Optional[Path] = ConfigOpt, sets: Optional[List[str]] = SetOpt):
    """Print the resolved configuration (defaults < file < --set), secrets masked."""
    from .config import validate_choices

    cfg = _config(config, sets)
    validate_choices(cfg)
    typer.echo(OmegaConf.to_yaml(masked(cfg)), nl=False)


@pack_app.command("export")
def pack_export(
    out: Path = typer.Argument(..., help="The JSONL pack to write (a .manifest.json is written beside it)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Only these phrases (one per line)."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Export stored descriptions as a pack."""
    from .packs import write_pack
    from .store import DescriptionStore

    cfg = _config(config, sets)
    wanted = set(read_phrase_file(file)) if file else None
    with DescriptionStore(store_path(cfg)) as store:
        rows = [r for r in store.rows(wanted) if len(r["descriptions"]) >= r["k"]]
    write_pack(out, rows, {"source": "actiongpt pack export"})
    typer.echo(f"exported {len(rows)} phrases to {out}", err=True)


@pack_app.command("import")
def pack_import(
    path: Path = typer.Argument(..., help="A pack written by `actiongpt pack export` or `expand --out`."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Import a pack into the store, so expanding with the same settings costs no call."""
    from .packs import read_pack, verify_manifest
    from .store import DescriptionStore

    cfg = _config(config, sets)
    verify_manifest(path)
    rows = read_pack(path)
    if any("key" not in r for r in rows):
        raise ActionGPTError(
            f"{path} has no store keys (a release gpt3_annotations.json?): use it directly with "
            f"--backend pack --set pack.path={path}"
        )
    with DescriptionStore(store_path(cfg)) as store:
        added = sum(store.put_row(r) for r in rows)
    typer.echo(f"imported {added} new of {len(rows)} phrases into {store_path(cfg)}", err=True)


@store_app.command("stats")
def store_stats(config: Optional[Path] = ConfigOpt, sets: Optional[List[str]] = SetOpt):
    """Rows, tokens and requests recorded in the store."""
    from .store import DescriptionStore

    with DescriptionStore(store_path(_config(config, sets))) as store:
        typer.echo(json.dumps(store.stats(), indent=2))


@app.command()
def score(
    packs: List[Path] = typer.Argument(..., help="JSONL packs or release gpt3_annotations.json files to compare."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    per_phrase: bool = typer.Option(False, "--per-phrase", help="Also score every phrase and show rejected texts."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N phrases of each pack."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Relevance, body-part coverage, length and rejection rate of description packs (see docs/quality.md)."""
    from .packs import read_pack, verify_manifest
    from .quality import BODY_GROUPS, score_rows

    cfg = _config(config, sets)
    reports = []
    for path in packs:
        verify_manifest(path)
        rows = [r for r in read_pack(path) if r["descriptions"]][:limit]
        report = {"pack": str(path), **score_rows(rows, cfg.quality)}
        if not per_phrase:
            report.pop("per_phrase")
        reports.append(report)
    if as_json:
        typer.echo(json.dumps(reports, indent=2, ensure_ascii=False))
        return

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    groups = list(BODY_GROUPS)
    head = f"{'pack':<28} {'phrases':>7} {'descr':>6} {'relev':>6} {'min':>6} {'words':>6} {'reject':>7} {'groups':>6}  "
    typer.echo(head + " ".join(f"{g:>5}" for g in groups))
    for r in reports:
        name = Path(r["pack"]).name
        typer.echo(
            f"{name[-28:]:<28} {r['phrases']:>7} {r['descriptions']:>6} {num(r['relevance_mean'], '.3f'):>6} "
            f"{num(r['relevance_min'], '.3f'):>6} {num(r['words_mean'], '.1f'):>6} {num(r['rejected_rate'], '.1%'):>7} "
            f"{num(r['groups_mean'], '.2f'):>6}  " + " ".join(f"{num(r['coverage'][g], '.2f'):>5}" for g in groups)
        )
    for r in reports:
        if r["rejections"]:
            kinds = ", ".join(f"{kind} {n}" for kind, n in r["rejections"].items())
            typer.echo(f"{Path(r['pack']).name}: rejected {kinds}")
        for p in r.get("per_phrase", ()):
            typer.echo(f"  {p['phrase']!r}: relevance {num(p['relevance_mean'], '.3f')} (min "
                       f"{num(p['relevance_min'], '.3f')}), {p['descriptions']} descriptions, "
                       f"{len(p['rejected'])} rejected, {num(p['groups_mean'], '.1f')} body-part groups")
            for item in p["rejected"]:
                text = item["text"] if len(item["text"]) <= 80 else item["text"][:77] + "..."
                typer.echo(f"    - {item['reason']}: {text}")


def main(argv=None) -> None:
    # PyTorch generation on small CPUs stalls without this; llama.cpp runs slower with it.
    if importlib.util.find_spec("llama_cpp") is None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = typer.main.get_command(app)
    try:
        # Without standalone mode, click returns typer.Exit's code instead of raising it.
        code = command.main(args=argv, prog_name="actiongpt", standalone_mode=False)
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
            _err(INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)
    except ActionGPTError as exc:
        _err(str(exc))
        sys.exit(EXIT_USAGE)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError:  # the help text is already printed
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        _err(" ".join(exc.format_message().split()) + " (see --help)")
        sys.exit(EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        _err(INTERRUPTED)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: keep it to one line unless asked
        if os.environ.get("ACTIONGPT_DEBUG"):
            raise
        _err(f"unexpected {type(exc).__name__}: {exc} (set ACTIONGPT_DEBUG=1 for the traceback)")
        sys.exit(EXIT_USAGE + 1)


if __name__ == "__main__":
    main()
