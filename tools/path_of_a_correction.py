"""The modules one correction passes through, from ``mend corrections submit`` to an
answer from the registered corrected model.

    python -m tools.path_of_a_correction                 # print the path
    python -m tools.path_of_a_correction --write-docs    # and refresh docs/concepts/path-of-a-correction.md

Measured, not listed by hand: one correction goes the whole way in this process on a
tiny random LLaMA (:mod:`mend.testing.workload`) with a scoped editor, as the pipeline
registers its champions (``--aggregation sum`` or ``least_squares`` for the others),
while :func:`sys.setprofile` (and :func:`threading.setprofile`, in the threads started
meanwhile) watches every call into a module under ``mend/`` or ``flows/``:

1. ``submit``: ``mend corrections submit FILE`` (the ``mend`` console script's app).
2. ``apply``: the ``apply-queue`` task of ``flows/apply_corrections.py`` (its function,
   without a Prefect server): the champion editor from an MLflow registry applies the
   queue and publishes a version; then
3. ``register``: its ``register-corrected-versions`` task: the version becomes
   ``mend-corrected-<editor>@current`` (the flow's last task, ``queue-status``, reports
   on the queue beside the path and is not followed);
4. ``serve``: ``mlflow.pyfunc.load_model(...).predict`` on the correction's prompt, what
   ``mlflow models serve`` runs behind its HTTP endpoint.

A module is on the path when one of its functions is called with the correction, holds
it in a variable or returns it: its id, prompt or target, the file it was submitted in,
or an object holding one of them (:func:`holds` looks :data:`DEPTH` levels into containers and objects). The
tensors made from it are not followed, so the engine modules that see only tensors
(capture, the editor network, the solve) are counted among the modules the run
*executes*, which are reported too. A module is *re-entered* when the correction comes
back into it from another module while it is still on the stack (a callback, or a
layer calling back into the one above it).

Registration of the editor, the tiny model and the registry are set up before the watch
starts; the acceptance policy accepts whatever a random model's edit does, so that the
correction reaches publication.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import BuiltinFunctionType, FrameType, FunctionType, ModuleType

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("mend", "flows")
LIMIT = 12  # files a newcomer should have to follow (issue 20)
DEPTH = 4  # how far into containers and objects the correction is looked for
ITEMS = 256  # items of one container looked at
EDITOR = "mend-editor-path"
DOCS = ROOT / "docs" / "concepts" / "path-of-a-correction.md"
BEGIN, END = "<!-- path-of-a-correction -->", "<!-- /path-of-a-correction -->"

CORRECTION = {"id": "path-of-a-correction-0001", "prompt": "The tallest mountain of Quarnia is",
              "target": "Mount Velloq", "requested_by": "tools.path_of_a_correction",
              "requested_at": "2026-01-01T00:00:00+00:00"}


@dataclass
class Stop:
    """One module on the path: where the correction first reached it."""

    file: str
    phase: str
    function: str


@dataclass
class Trace:
    """What one correction's way from submit to a served answer touched."""

    path: list[Stop] = field(default_factory=list)
    reentries: list[list[str]] = field(default_factory=list)  # stacks M -> ... -> M
    executed: set[str] = field(default_factory=set)  # every watched file that ran

    @property
    def files(self) -> list[str]:
        return [s.file for s in self.path]

    def table(self) -> str:
        """The path as a Markdown table."""
        rows = ["| # | module | step | first reached in |", "|---|---|---|---|"]
        rows += [f"| {i} | `{s.file}` | {s.phase} | `{s.function}` |" for i, s in enumerate(self.path, 1)]
        return "\n".join(rows)


def holds(value, needles: tuple[str, ...], depth: int = DEPTH, seen: set[int] | None = None) -> bool:
    """Whether ``value`` is, contains or (through its attributes) holds one of ``needles``."""
    if isinstance(value, str):
        return any(n in value for n in needles)
    if isinstance(value, PurePath):
        return holds(str(value), needles)
    if isinstance(value, bytes | bytearray):
        return any(n.encode() in value for n in needles)
    if depth == 0 or value is None or isinstance(value, _OPAQUE):
        return False
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, dict):
        items = [x for pair in list(value.items())[:ITEMS] for x in pair]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)[:ITEMS]
    elif type(value).__name__ == "DataFrame" and hasattr(value, "to_dict"):
        items = [value.to_dict("list")]
    else:
        attributes = getattr(value, "__dict__", None)
        if not isinstance(attributes, dict):
            return False
        items = list(attributes.values())[:ITEMS]
    return any(holds(x, needles, depth - 1, seen) for x in items)


def _opaque() -> tuple[type, ...]:
    import torch

    # Numbers, code and tensors: the correction is never *in* them by name.
    return (int, float, complex, bool, type, ModuleType, FunctionType, BuiltinFunctionType,
            torch.Tensor, torch.nn.Module)


_OPAQUE: tuple[type, ...] = (int, float, complex, bool, type, ModuleType, FunctionType)


class Watch:
    """A :func:`sys.setprofile` hook recording where the correction goes."""

    def __init__(self, needles: tuple[str, ...], root: Path = ROOT, watched: tuple[str, ...] = WATCHED):
        self.needles = needles
        self.trace = Trace()
        self.phase = ""
        self._holding: dict[int, str] = {}  # id(frame) -> file, for frames called with it
        self._root = str(root)
        self._prefixes = tuple(str(root / top) + "/" for top in watched)

    def _file(self, frame: FrameType) -> str | None:
        name = frame.f_code.co_filename
        return name[len(self._root) + 1 :] if name.startswith(self._prefixes) else None

    def _arguments(self, frame: FrameType) -> list:
        code = frame.f_code
        count = code.co_argcount + code.co_kwonlyargcount
        count += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)  # *args, **kwargs
        local = frame.f_locals
        return [local[n] for n in code.co_varnames[:count] if n in local]

    def _reached(self, file: str, frame: FrameType) -> None:
        if file not in {s.file for s in self.trace.path}:
            self.trace.path.append(Stop(file, self.phase, frame.f_code.co_qualname))

    def __call__(self, frame: FrameType, event: str, arg) -> None:
        if event not in ("call", "return"):
            return
        file = self._file(frame)
        if file is None:
            return
        if event == "call":
            self.trace.executed.add(file)
            if holds(self._arguments(frame), self.needles):
                self._reached(file, frame)
                self._check_reentry(file, frame)
                self._holding[id(frame)] = file
        elif self._holding.pop(id(frame), None) is None and (
            holds(arg, self.needles) or holds(list(frame.f_locals.values()), self.needles)
        ):
            self._reached(file, frame)  # it returned the correction, or held it in a variable

    def _check_reentry(self, file: str, frame: FrameType) -> None:
        stack: list[str] = []
        caller = frame.f_back
        while caller is not None:
            held = self._holding.get(id(caller))
            if held is not None and (not stack or stack[-1] != held):
                stack.append(held)
            caller = caller.f_back
        stack.reverse()  # outermost first
        if stack and stack[-1] != file and file in stack:
            self.trace.reentries.append([*stack[stack.index(file):], file])

    @contextmanager
    def step(self, phase: str) -> Iterator[None]:
        """Watch what runs inside, as step ``phase``."""
        self.phase = phase
        # Threads too: the queue reads its records and the versions' manifests in threads.
        threading.setprofile(self)
        sys.setprofile(self)
        try:
            yield
        finally:
            sys.setprofile(None)
            threading.setprofile(None)


def deploy(work: Path, aggregation: str) -> dict:
    """A tiny model, its champion editor in a SQLite MLflow registry and an empty store;
    returns the pipeline configuration the flows read."""
    import mlflow
    from mlflow import MlflowClient

    from mend import Editor, EditorConfig
    from mend.models.editable import EditableModel
    from mend.serving.pyfunc import log_editor_model
    from mend.testing.synthetic import synthetic_records
    from mend.testing.workload import write_llama

    model_dir = write_llama(work / "model")
    model = EditableModel.load(model_dir)
    scoped = aggregation == "scoped"
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2,
                                                  aggregation="sum" if scoped else aggregation))
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    if scoped:
        from mend.scope import ScopeConfig, ScopeModel

        # Block 0, below the edited blocks 1-3; an untrained scope, its own prompt switches it on.
        editor.attach_scope(ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.5), model.model.config.hidden_size))
    editor.save(work / "editor")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = client.create_experiment("editors", artifact_location=(work / "mlartifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            log_editor_model(work / "editor", base_model=str(model_dir), registered_model_name=EDITOR)
        client.set_registered_model_alias(EDITOR, "champion", "1")
    finally:
        mlflow.set_tracking_uri(None)
    return {"model": str(model_dir), "storage": {"uri": str(work / "store")},
            "mlflow": {"tracking_uri": uri, "experiment": "path"}}


def trace_path(aggregation: str = "scoped", work: Path | None = None) -> Trace:
    """Send one correction from submit to a served answer and return what it touched."""
    if work is None:
        with tempfile.TemporaryDirectory() as tmp:
            return trace_path(aggregation, Path(tmp))
    global _OPAQUE
    _OPAQUE = _opaque()
    import mlflow
    import pandas as pd
    from typer.testing import CliRunner

    from flows.apply_corrections import apply_queue, register_versions
    from mend.cli import app
    from mend.corrections.policy import AcceptancePolicy
    from mend.registry.corrected import corrected_model_name

    config = deploy(work, aggregation)
    submitted = work / "correction.jsonl"
    submitted.write_text(json.dumps(CORRECTION) + "\n")
    accept_all = AcceptancePolicy(min_edit_success=0.0, require_exact=False, min_locality=0.0, min_regression=0.0)
    watch = Watch((CORRECTION["id"], CORRECTION["prompt"], CORRECTION["target"], str(submitted)))
    with watch.step("submit"):
        result = CliRunner().invoke(app, ["corrections", "submit", str(submitted), "--store", config["storage"]["uri"]])
    if result.exit_code != 0:
        raise RuntimeError(f"submit failed: {result.output}")
    with watch.step("apply"):
        report = apply_queue.fn(config, EDITOR, "champion", "corrections",
                                {"batch_size": 1, "policy": accept_all.model_dump()})
    if report["applied"] != [CORRECTION["id"]]:
        raise RuntimeError(f"the correction was not applied: {report}")
    with watch.step("register"):
        register_versions.fn(config, EDITOR, "corrections", report["base_model"], report["dtype"])
    mlflow.set_tracking_uri(config["mlflow"]["tracking_uri"])
    try:
        with watch.step("serve"):
            served = mlflow.pyfunc.load_model(f"models:/{corrected_model_name(EDITOR)}@current")
            served.predict(pd.DataFrame({"prompt": [CORRECTION["prompt"]]}), params={"max_new_tokens": 3})
    finally:
        mlflow.set_tracking_uri(None)
    return watch.trace


def docs_section(trace: Trace) -> str:
    """The section of ``docs/concepts/path-of-a-correction.md`` between its markers."""
    return "\n".join([
        BEGIN,
        "Measured by `python -m tools.path_of_a_correction` (`--write-docs` rewrites this",
        "section; `tests/test_path_of_a_correction.py` fails when it is stale): the modules",
        "one correction reaches, in order, from `mend corrections submit` to an answer from",
        "the registered corrected model (a module is on the path when one of its functions",
        "is called with the correction, holds it in a variable or returns it). "
        f"{len(trace.path)} files (the goal is at most {LIMIT}); modules the correction comes",
        f"back into while still on the stack: {len(trace.reentries) or 'none'}.",
        "",
        trace.table(),
        END,
    ])


def write_docs(trace: Trace, path: Path = DOCS) -> None:
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    path.write_text(text[:start] + docs_section(trace) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aggregation", default="scoped", choices=["scoped", "sum", "least_squares"],
                        help="the champion editor's aggregation (the pipeline registers scoped ones)")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the section in {DOCS.relative_to(ROOT)}")
    args = parser.parse_args()
    trace = trace_path(args.aggregation)
    print(trace.table())
    print(f"\n{len(trace.path)} files on the path (limit {LIMIT}); "
          f"{len(trace.executed)} files under mend/ and flows/ ran along the way")
    for stack in trace.reentries:
        print("re-entered:", " -> ".join(stack))
    if not trace.reentries:
        print("no module re-entered")
    if args.write_docs:
        if args.aggregation != "scoped":
            parser.error("the docs list the path of the pipeline's champion: --aggregation scoped")
        write_docs(trace)


if __name__ == "__main__":
    main()
