"""``mend corrections``: the daily work on the queue.

    mend corrections submit fixes.jsonl            # or - for standard input
    mend corrections status [--json]               # how many are live, what else moved
    mend corrections list [--state pending]
    mend corrections verify                        # records the queue cannot trust
    mend corrections apply --editor runs/zsre/best
    mend corrections rollback --id fix-17 --reason "source was wrong"
    mend corrections rollback --to-version 3
    mend corrections show [VERSION]
    mend corrections adapter VERSION --out adapter/   # rebuilt from the version's deltas
    mend corrections prune-adapters --keep 10
    mend corrections lease [--break-lease]         # who holds the apply lease; free a dead run's

The queue lives on an artifact store: ``--store``, else ``$MEND_STORE`` (the variable
the flows and deployments read too), else ``./artifacts``; a local directory or an
``s3://bucket/prefix`` URI. Errors are one line; ``--debug`` shows the traceback.
Exit codes: 0 done, 1 failed (or records were dead-lettered), 2 bad input.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mend.corrections.lease import LeaseHeldError, break_lease, holder_name, inspect_lease
from mend.corrections.queue import STATES, CorrectionQueue
from mend.corrections.schema import read_submissions
from mend.storage import (
    BucketNotFoundError,
    InvalidKeyError,
    InvalidStoreURIError,
    StorageError,
    resolve_store_uri,
)

if TYPE_CHECKING:  # imported where used: it brings torch, which the queue's commands do not need
    from mend.corrections.versions import VersionStore

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(soft_wrap=True)

StoreOption = typer.Option(None, "--store", help="artifact store URI (default: $MEND_STORE, else ./artifacts)")
PrefixOption = typer.Option("corrections", "--prefix", help="queue prefix on the store")
DebugOption = typer.Option(False, "--debug", help="on an error, show the traceback")
LEASE = "locks/apply.json"

F = TypeVar("F", bound=Callable[..., Any])


class BadInput(Exception):
    """What the user gave cannot work (exit code 2)."""


class Failure(Exception):
    """The command could not do its work (exit code 1)."""


def plain(text: object) -> Text:
    """User text for the terminal: never read as rich markup, control and invisible
    characters (escape sequences, bidirectional overrides, zero-width) shown as escapes."""
    return Text(visible(str(text)))


def visible(text: str) -> str:
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _explain(error: BaseException, store: str | None) -> tuple[int, str]:
    """Exit code and one line for an error: what went wrong and what to do."""
    where = f" (store {store})" if store else ""
    if isinstance(error, BadInput):
        return 2, str(error)
    if isinstance(error, Failure):
        return 1, str(error)
    if isinstance(error, InvalidStoreURIError):
        return 2, f"{error}; give --store a directory or s3://bucket/prefix (or set MEND_STORE)"
    if isinstance(error, InvalidKeyError):
        return 2, f"{error}; --prefix must be a relative name such as 'corrections'"
    if isinstance(error, BucketNotFoundError):
        return 2, f"{error}{where}: create the bucket, or point --store / MEND_STORE at an existing one"
    if isinstance(error, LeaseHeldError):
        return 1, (f"{error}: another apply or rollback is running; if it was killed, "
                   "`mend corrections lease --break-lease` frees the queue")
    if isinstance(error, ValidationError):
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return 2, f"invalid settings: {details}"
    if isinstance(error, StorageError):
        return 1, f"{error}{where}"
    if isinstance(error, OSError) and error.filename is not None:
        return 2, f"cannot read {error.filename}: {error.strerror or error}"
    return 1, f"{type(error).__name__}: {error}{where}"


def command(func: F) -> F:
    """Run a command with one-line errors: exit 2 for bad input, 1 for a failure;
    ``--debug`` lets the exception (and its traceback) through."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as error:
            if kwargs.get("debug"):
                raise
            code, message = _explain(error, kwargs.get("store") or os.environ.get("MEND_STORE"))
            typer.echo(f"error: {visible(message)} (--debug shows the traceback)", err=True)
            raise typer.Exit(code) from None

    return run  # type: ignore[return-value]


def _queue(store: str | None, prefix: str) -> CorrectionQueue:
    from mend.storage import open_store

    return CorrectionQueue(open_store(resolve_store_uri(store)), prefix)


def _versions(queue: CorrectionQueue) -> VersionStore:
    from mend.corrections.versions import VersionStore

    return VersionStore(queue.store, queue.prefix)


def _published(versions: VersionStore, version: int | None = None) -> int:
    """``version`` (None: the latest), refused unless it is published."""
    latest = versions.latest()
    if latest is None:
        raise Failure(f"nothing is published yet in {versions.store.uri}/{versions.root}: apply corrections first")
    version = latest if version is None else version
    if version not in versions.versions():
        raise BadInput(f"version {version} is not published: versions are 1..{latest}")
    return version


def _read_input(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    path = Path(file)
    if path.is_dir():
        raise BadInput(f"{file} is a directory: give a JSON, JSON list or JSON Lines file")
    if not path.exists():
        raise BadInput(f"{file} does not exist: give a JSON, JSON list or JSON Lines file (or - for stdin)")
    return path.read_bytes()


@app.command()
@command
def submit(
    file: str = typer.Argument(..., help="JSON, JSON list or JSON Lines file; - for stdin"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Validate and enqueue corrections; invalid ones go to dead-letter with the reason."""
    data = _read_input(file)
    report = _queue(store, prefix).submit(read_submissions(data, "stdin" if file == "-" else Path(file).name))
    console.print(Text.assemble(
        (f"{len(report.accepted)} pending", "green"),
        f", {len(report.dead_lettered)} dead-lettered, {len(report.known)} already known",
    ))
    for name, reason in report.known:
        console.print(Text.assemble("  ", ("known", "cyan"), " ", plain(name), ": ", plain(reason)))
    for key, reason in report.dead_lettered:
        console.print(Text.assemble("  ", ("dead-letter", "yellow"), " ", plain(key), ": ", plain(reason)))
    if report.dead_lettered:
        raise typer.Exit(code=1)


@app.command("list")
@command
def list_(
    state: str = typer.Option(None, help=f"one of {', '.join(STATES)}; default: counts of all"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Counts per state, or the records of one state with their reasons (read-only)."""
    if state is not None and state not in STATES:
        raise BadInput(f"unknown state {state!r}: use one of {', '.join(STATES)}")
    queue = _queue(store, prefix)
    if state is None:
        for name, count in queue.counts().items():
            console.print(f"{name:12s} {count}")
        quarantined = len(queue.store.list(f"{queue.prefix}/quarantine/"))
        if quarantined:
            console.print(f"{'quarantine':12s} {quarantined}  (see `mend corrections verify`)")
        return
    table = Table(title=state)
    for column in ("id", "prompt", "target", "detail"):
        table.add_column(column)
    for name, record, problem in queue.inspect_all(state):
        if problem is not None:
            table.add_row(plain(name), "", "", plain(f"untrusted: {problem}"))
        elif state == "pending":
            table.add_row(plain(name), plain(record.prompt), plain(record.target), plain(record.requested_by))
        elif state == "dead-letter":
            raw = record.get("raw")
            shown = raw if raw is not None else record.get("raw_repr") or f"base64: {record.get('raw_base64', '')}"
            table.add_row(plain(name), plain(str(shown)[:60]), "", plain(record.get("reason", "")))
        else:
            c = record["correction"]
            detail = f"version {record.get('version')}" if state == "applied" else record.get("reason", "")
            table.add_row(plain(name), plain(c["prompt"]), plain(c["target"]), plain(detail))
    console.print(table)


@app.command()
@command
def status(
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """How many reported corrections are live, what became of the others and what else
    the live ones moved (read-only)."""
    from mend.corrections.status import queue_status

    report = queue_status(_queue(store, prefix))
    if as_json:
        console.print_json(json.dumps(report.as_json()))
        return
    for line in report.lines():
        console.print(plain(line))


@app.command()
@command
def verify(
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Report records the queue cannot trust and quarantined ones (read-only; exit 1 if any)."""
    problems = _queue(store, prefix).verify()
    for problem in problems:
        console.print(Text.assemble(plain(problem.key), ": ", plain(problem.reason)))
    console.print(f"{len(problems)} problem(s)")
    if problems:
        raise typer.Exit(code=1)


@app.command()
@command
def apply(
    editor: Path = typer.Option(..., exists=True, help="editor directory"),
    model: str = typer.Option(None, help="base model (default: the editor's)"),
    config: Path = typer.Option(
        None, exists=True,
        help="YAML ApplyConfig: batch_size, policy, regression_probes, regulariser_scale, passes, keep_adapters",
    ),
    batch_size: int = typer.Option(None, help="overrides the config's batch size"),
    regulariser_scale: float = typer.Option(
        None, help="overrides the config's: least-squares regularisers x this (>1: more locality)"
    ),
    passes: int = typer.Option(None, help="overrides the config's: captures per batch (more: edits land better)"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Apply every pending correction now and publish new versions."""
    import yaml

    from mend.corrections.apply import ApplyConfig, apply_pending
    from mend.editor.editor import Editor
    from mend.models.editable import EditableModel

    given = (yaml.safe_load(config.read_text()) or {}) if config else {}
    flags = {"batch_size": batch_size, "regulariser_scale": regulariser_scale, "passes": passes}
    settings = ApplyConfig.model_validate({**given, **{k: v for k, v in flags.items() if v is not None}})
    queue = _queue(store, prefix)
    ed = Editor.load(editor).eval()
    lm = EditableModel.load(model or ed.base_model.get("source") or "smollm2-135m", patterns=ed.config.patterns)
    report = apply_pending(queue, lm, ed, settings,
                               details={"editor": {"path": str(editor)}}, log=lambda m: console.print(plain(m)))
    console.print(f"published versions {report.versions}: {len(report.applied)} applied, "
                  f"{len(report.rejected)} rejected, {len(report.dead_lettered)} dead-lettered "
                  f"({report.seconds:.1f}s)")
    for cid, reason in report.rejected:
        console.print(Text.assemble("  ", ("rejected", "yellow"), " ", plain(cid), ": ", plain(reason)))


@app.command()
@command
def rollback(
    id_: list[str] = typer.Option([], "--id", help="correction to take out (repeatable)"),
    to_version: int = typer.Option(None, help="restore the corrections of this version"),
    reason: str = typer.Option("", help="recorded in the new version's manifest"),
    requested_by: str = typer.Option(os.environ.get("USER", ""), help="who asked"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Publish a new version without some corrections, or equal to an earlier version."""
    from mend.corrections.rollback import rollback as do_rollback

    if bool(id_) == (to_version is not None):
        raise BadInput("give either --id (repeatable) or --to-version")
    queue = _queue(store, prefix)
    _published(_versions(queue), to_version)
    try:
        version = do_rollback(queue, correction_ids=id_, to_version=to_version,
                              reason=reason, requested_by=requested_by)
    except ValueError as error:
        if isinstance(error, ValidationError):
            raise
        raise BadInput(f"{error}: see `mend corrections show` for the active corrections") from error
    console.print(f"published version {version}")


@app.command()
@command
def show(
    version: int = typer.Argument(None, help="default: the latest"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Print a published version's manifest."""
    versions = _versions(_queue(store, prefix))
    console.print_json(json.dumps(versions.manifest(_published(versions, version))))


@app.command()
@command
def adapter(
    version: int = typer.Argument(..., help="published version"),
    out: Path = typer.Option(..., help="directory to write the PEFT adapter to"),
    routed: bool = typer.Option(False, help="scoped versions: one adapter per correction plus the router index"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Write a version's corrections as a PEFT LoRA adapter, rebuilt from its deltas."""
    versions = _versions(_queue(store, prefix))
    _published(versions, version)
    try:
        versions.export_adapter(version, out, routed=routed)
    except ValueError as error:  # e.g. --routed on a version that is not scoped
        raise BadInput(str(error)) from error
    console.print(Text(f"adapter of version {version} written to {visible(str(out))}"))


@app.command("prune-adapters")
@command
def prune_adapters(
    keep: int = typer.Option(..., min=1, help="keep the adapters of this many newest versions"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Delete older versions' published PEFT adapters (their deltas stay: see ``adapter``)."""
    pruned = _versions(_queue(store, prefix)).prune_adapters(keep)
    console.print(f"pruned the adapters of versions {pruned}" if pruned else "nothing to prune")


@app.command()
@command
def lease(
    break_lease_: bool = typer.Option(False, "--break-lease", help="remove the lease (after confirmation)"),
    yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
    reason: str = typer.Option("", help="recorded with the broken lease"),
    store: str = StoreOption,
    prefix: str = PrefixOption,
    debug: bool = DebugOption,
) -> None:
    """Show who holds the queue's apply/rollback lease and for how long; with
    ``--break-lease``, free it from a run that was killed (recorded in the store)."""
    queue = _queue(store, prefix)
    key = f"{queue.prefix}/{LEASE}"
    held = inspect_lease(queue.store, key)
    if held is None:
        console.print(Text(f"{key}: free"))
    else:
        age = held.get("age_s")
        remaining = held["remaining_s"]
        when = f"expires in {remaining:.0f}s" if remaining > 0 else f"expired {-remaining:.0f}s ago"
        console.print(Text.assemble(
            f"{key}: held by ", plain(held.get("holder") or held.get("owner", "?")),
            f" (owner {visible(str(held.get('owner', '?')))}), ",
            f"acquired {age:.0f}s ago, " if age is not None else "", when,
        ))
    if not break_lease_:
        return
    if held is None and not queue.store.list(f"{key}.takeover-"):
        console.print("nothing to break")
        return
    if not yes:
        typer.confirm("Break it? Only do so if the run holding it is dead", abort=True)
    record = break_lease(queue.store, key, by=holder_name(), reason=reason)
    console.print(Text(f"lease broken; recorded at {record}"))
