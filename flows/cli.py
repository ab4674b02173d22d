"""What the flows' command lines share: ``python -m flows`` (the whole pipeline, in
``flows/__main__.py``) and ``python -m flows.<step>`` (one step, reading the previous
steps' JSON outputs, :func:`run_single`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mend.overrides import parse_overrides


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--store`` and ``--tracking-uri``."""
    parser.add_argument("--config", help="pipeline YAML (default: configs/pipeline-default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_minutes=5 (repeatable)")
    parser.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--set``, ``--store`` and ``--tracking-uri`` options as dotted-key overrides."""
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as exc:
        raise SystemExit(f"--set: {exc}") from exc
    if args.store:
        overrides["storage.uri"] = args.store
    if args.tracking_uri:
        overrides["mlflow.tracking_uri"] = args.tracking_uri
    return overrides


def quiet() -> None:
    """No progress bars or warnings from transformers while flows run."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def run_single(flow_fn, needs: tuple[str, ...] = ()) -> None:
    """``python -m flows.<step>``: JSON files (or plain values) for the step's inputs."""
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    add_common_options(parser)
    for name in needs:
        parser.add_argument(f"--{name.replace('_', '-')}", required=True,
                            help=f"{name}: a JSON file written by the previous step (or a plain value)")
    parser.add_argument("--out", type=Path, help="write the step's result here as JSON")
    args = parser.parse_args()
    quiet()
    kwargs = {}
    for name in needs:
        value = getattr(args, name)
        kwargs[name] = json.loads(Path(value).read_text()) if Path(value).is_file() else value
    result = flow_fn(**kwargs, config=args.config, overrides=config_overrides(args))
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)
