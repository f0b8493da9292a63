"""The `actiongpt` command. Every user error ends as one line on stderr and a non-zero exit.

Plugins add commands through the ``register_commands`` hook; they can reuse the options and helpers
below (``ExpandRequest``, ``report``), as the OpenAI Batch API command (batch.py) does.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError
from omegaconf import OmegaConf

from .config import load_config, masked, schema, secret_keys, store_path
from .errors import ActionGPTError, redact

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Expand action phrases into LLM-written body-movement descriptions (Action-GPT).")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
pack_app = typer.Typer(no_args_is_help=True, help="Export and import description packs (JSONL + manifest).")
store_app = typer.Typer(no_args_is_help=True, help="The SQLite description store.")
app.add_typer(config_app, name="config")
app.add_typer(pack_app, name="pack")
app.add_typer(store_app, name="store")
log = logging.getLogger("actiongpt")


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


def _setup_logging(verbose: bool) -> None:
    """Warnings (long waits, slow first loads) always reach stderr; --verbose adds retries and progress."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("actiongpt: %(message)s"))
    handler.addFilter(_Redacting())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log retries and progress to stderr.")):
    _setup_logging(verbose)


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: $ACTIONGPT_CONFIG).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a config key: --set sampling.temperature=0.7 (repeatable).")
EXIT_USAGE, EXIT_FAILURES, EXIT_INTERRUPTED = 2, 1, 130
INTERRUPTED = "interrupted: everything expanded so far is in the store; run the same command again to resume"


def _err(message: str) -> None:
    typer.echo(f"actiongpt: error: {redact(message)}", err=True)


def _config(config: Optional[Path], sets: Optional[List[str]], **values):
    sets = list(sets or ())
    cfg = load_config(config, sets, **{k: v for k, v in values.items() if v is not None})
    secrets = secret_keys(schema()) if sets else set()
    if any(item.split("=", 1)[0].strip() in secrets and item.split("=", 1)[1].strip() for item in sets if "=" in item):
        log.warning("a key given with --set is visible to other users in the process list: "
                    "use its environment variable (OPENAI_API_KEY) or a config file readable only by you")
    return cfg


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


def check_writable(path: Path) -> None:
    """Fail now, before anything is paid for, if ``path`` (and its manifest) could not be written."""
    if path.is_dir():
        raise ActionGPTError(f"cannot write {path}: it is a directory (give a file name, e.g. {path}/pack.jsonl)")
    parent = path.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ActionGPTError(f"cannot write {path}: {ancestor} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".check"):
            pass
    except OSError as exc:
        raise ActionGPTError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- expansion ----------------------------------------------------------------------------------
@dataclass
class ExpandRequest:
    """What `expand` (and commands like it) were asked, validated before anything is paid for."""

    phrases: list
    cfg: object
    out: Optional[Path]
    from_file: bool
    distinct: int  # phrases after normalising and deduplicating (sizes the progress bar)

    @classmethod
    def from_options(cls, phrases, file, out, *, config, sets, k=None, backend=None, model=None, template=None,
                     offline=False, concurrency=None) -> "ExpandRequest":
        from .expander import normalise_phrase

        todo = list(phrases or [])
        if file is not None:
            todo += read_phrase_file(file)
        if not todo:
            raise ActionGPTError("nothing to expand: give a phrase (actiongpt expand \"jump\") or --file labels.txt")
        cfg = _config(config, sets, k=k, backend=backend, model=model, template=template,
                      **{"store.offline": True if offline else None, "expand.concurrency": concurrency})
        distinct = {normalise_phrase(phrase, cfg.expand.max_phrase_chars) for phrase in todo}
        if out is not None:
            check_writable(out)
        return cls(todo, cfg, out, file is not None, len(distinct))


def write_outputs(request: ExpandRequest, result, expander) -> None:
    if request.out is not None:
        from .packs import write_pack

        write_pack(request.out, result.rows, {"config": OmegaConf.to_container(masked(expander.cfg)),
                                              "backend": expander.backend_name, **expander.backend.identity()})


def report(request: ExpandRequest, result, as_json: bool) -> None:
    """Print the descriptions and the summary; exit 1 when some phrase failed."""
    if as_json:
        typer.echo(json.dumps(result.descriptions, ensure_ascii=False, indent=2))
    elif request.out is None or not request.from_file:
        for phrase, descriptions in result.descriptions.items():
            typer.echo(phrase)
            for i, text in enumerate(descriptions, 1):
                typer.echo(f"  {i}. {text}")
    s = result.stats
    if request.from_file or s.failures:
        typer.echo(
            f"{s.phrases} phrases: {s.cache_hits} from the store, {s.expanded} expanded, {len(s.failures)} failed; "
            f"{s.requests} requests, {s.prompt_tokens} prompt + {s.completion_tokens} completion tokens"
            + (f"; wrote {request.out}" if request.out else ""),
            err=True,
        )
    for phrase, reason in list(s.failures.items())[:10]:
        typer.echo(f"  failed: {phrase!r}: {redact(reason)}", err=True)
    if s.failures:
        raise typer.Exit(EXIT_FAILURES)


PhrasesArg = typer.Argument(None, help="Action phrases, e.g. jump 'pick up'.")
FileOpt = typer.Option(None, "--file", "-f", help="A file of phrases, one per line.")
OutOpt = typer.Option(None, "--out", "-o", help="Write the results as a pack (JSONL + manifest).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
KOpt = typer.Option(None, "-k", help="Descriptions per phrase (default 4).")
BackendOpt = typer.Option(None, "--backend", "-b", help="openai, embedded, transformers, pack, identity, ...")
ModelOpt = typer.Option(None, "--model", "-m", help="Model name or local path for the backend.")
TemplateOpt = typer.Option(None, "--template", "-t", help="Prompt template (see `actiongpt templates`).")
OfflineOpt = typer.Option(False, "--offline", help="Use stored descriptions only; fail listing any missing.")
ConcurrencyOpt = typer.Option(None, "--concurrency", help="Most requests in flight at once (a ceiling).")


@app.command()
def expand(
    ctx: typer.Context,
    phrases: Optional[List[str]] = PhrasesArg,
    file: Optional[Path] = FileOpt,
    out: Optional[Path] = OutOpt,
    as_json: bool = JsonOpt,
    k: Optional[int] = KOpt,
    backend: Optional[str] = BackendOpt,
    model: Optional[str] = ModelOpt,
    template: Optional[str] = TemplateOpt,
    offline: bool = OfflineOpt,
    concurrency: Optional[int] = ConcurrencyOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar for --file."),
    batch: bool = typer.Option(False, "--batch", hidden=True, help="Same as `actiongpt batch`."),
    poll_interval: float = typer.Option(30.0, "--poll-interval", hidden=True, help="With --batch."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Print k descriptions for each phrase (or expand a whole --file into the store and --out)."""
    from .expander import Expander

    if batch:  # kept from before the Batch API moved into its plugin's own command
        return _forward(ctx, "batch", {"phrases": phrases, "file": file, "out": out, "as_json": as_json, "k": k,
                                  "backend": backend, "model": model, "template": template, "offline": offline,
                                  "poll_interval": poll_interval, "config": config, "sets": sets})
    request = ExpandRequest.from_options(phrases, file, out, config=config, sets=sets, k=k, backend=backend,
                                         model=model, template=template, offline=offline, concurrency=concurrency)
    with Expander(request.cfg) as expander:
        result = _run_with_progress(expander, request, show=progress and request.from_file)
        write_outputs(request, result, expander)
    report(request, result, as_json)


def _forward(ctx: typer.Context, name: str, params: dict):
    command = ctx.parent.command.get_command(ctx.parent, name) if ctx.parent else None
    if command is None:
        raise ActionGPTError(f"no plugin provides `actiongpt {name}` (is it disabled?)")
    return command.callback(**params)


def _run_with_progress(expander, request: ExpandRequest, show: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        return expander.run(request.phrases)
    columns = (TextColumn("expanding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("expand", total=request.distinct, failed="")
        failed = 0

        def advance(phrase, ok):
            nonlocal failed
            if ok:
                bar.advance(task)  # a failed phrase is not done: it shows apart
            else:
                failed += 1
                bar.update(task, failed=f"{failed} failed")

        return expander.run(request.phrases, progress=advance)


# -- inspection -----------------------------------------------------------------------------------
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


@config_app.command("docs")
def config_docs():
    """Print every key with its default, choices or range and help (the block in docs/configuration.md)."""
    from .config import reference_yaml

    typer.echo(reference_yaml(), nl=False)


# -- packs and the store ----------------------------------------------------------------------------
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
    check_writable(out)
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
    from .packs import import_pack
    from .store import DescriptionStore

    cfg = _config(config, sets)
    with DescriptionStore(store_path(cfg)) as store:
        added, total = import_pack(store, path)
    typer.echo(f"imported {added} new of {total} phrases into {store_path(cfg)}", err=True)


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
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N phrases of each pack."),
    config: Optional[Path] = ConfigOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Relevance, body-part coverage, length and rejection rate of description packs (see docs/quality.md)."""
    from .packs import read_pack, verify_manifest
    from .quality import score_rows

    cfg = _config(config, sets)
    reports = []
    for path in packs:
        verify_manifest(path)
        rows = [r for r in read_pack(path) if r["descriptions"]][:limit]
        report_ = {"pack": str(path), **score_rows(rows, cfg.quality)}
        if not per_phrase:
            report_.pop("per_phrase")
        reports.append(report_)
    if as_json:
        typer.echo(json.dumps(reports, indent=2, ensure_ascii=False))
    else:
        _print_scores(reports)


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def _print_scores(reports: list) -> None:
    from .quality import BODY_GROUPS

    groups = list(BODY_GROUPS)
    head = f"{'pack':<28} {'phrases':>7} {'descr':>6} {'relev':>6} {'min':>6} {'words':>6} {'reject':>7} {'groups':>6}  "
    typer.echo(head + " ".join(f"{g:>5}" for g in groups))
    for r in reports:
        name = Path(r["pack"]).name
        typer.echo(
            f"{name[-28:]:<28} {r['phrases']:>7} {r['descriptions']:>6} {_num(r['relevance_mean'], '.3f'):>6} "
            f"{_num(r['relevance_min'], '.3f'):>6} {_num(r['words_mean'], '.1f'):>6} "
            f"{_num(r['rejected_rate'], '.1%'):>7} {_num(r['groups_mean'], '.2f'):>6}  "
            + " ".join(f"{_num(r['coverage'][g], '.2f'):>5}" for g in groups)
        )
    for r in reports:
        if r["rejections"]:
            kinds = ", ".join(f"{kind} {n}" for kind, n in r["rejections"].items())
            typer.echo(f"{Path(r['pack']).name}: rejected {kinds}")
        for p in r.get("per_phrase", ()):
            typer.echo(f"  {p['phrase']!r}: relevance {_num(p['relevance_mean'], '.3f')} (min "
                       f"{_num(p['relevance_min'], '.3f')}), {p['descriptions']} descriptions, "
                       f"{len(p['rejected'])} rejected, {_num(p['groups_mean'], '.1f')} body-part groups")
            for item in p["rejected"]:
                text = item["text"] if len(item["text"]) <= 80 else item["text"][:77] + "..."
                typer.echo(f"    - {item['reason']}: {text}")


# -- entry point ------------------------------------------------------------------------------------
def _command():
    """The click command: built-in commands plus those plugins add (``register_commands``)."""
    from .plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=app)
    return typer.main.get_command(app)


def main(argv=None) -> None:
    _setup_logging(verbose=False)
    try:
        command = _command()
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
    except OSError as exc:  # a file or directory problem: ordinary, not a bug
        where = f": {exc.filename}" if exc.filename else ""
        _err(f"{exc.strerror or exc}{where}")
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # a bug: keep it to one line unless asked
        if os.environ.get("ACTIONGPT_DEBUG"):
            raise
        _err(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())} (set ACTIONGPT_DEBUG=1 for the traceback)")
        sys.exit(EXIT_USAGE + 1)


if __name__ == "__main__":
    main()
