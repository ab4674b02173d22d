"""Command lines of the flows: ``python -m flows`` (the whole pipeline) and
``python -m flows.<step>`` (one step, reading the previous steps' JSON outputs).

Local defaults, applied before Prefect is imported and only when nothing else is
configured: ``PREFECT_HOME=./.prefect`` (runs and the temporary API's database stay in
the project; ``prefect server start`` with the same ``PREFECT_HOME`` shows them) unless
``PREFECT_HOME`` or ``PREFECT_API_URL`` is set, and Prefect analytics off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def apply_local_defaults(cwd: Path | None = None) -> None:
    cwd = cwd or Path.cwd()
    if not os.environ.get("PREFECT_HOME") and not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_HOME"] = str(cwd / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline YAML (default: configs/pipeline-default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.max_minutes=5 (repeatable)")
    parser.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db)")


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _overrides(args.overrides)
    if args.store:
        overrides["storage.uri"] = args.store
    if args.tracking_uri:
        overrides["mlflow.tracking_uri"] = args.tracking_uri
    return overrides


def _quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def run_single(flow_fn, needs: tuple[str, ...] = ()) -> None:
    """``python -m flows.<step>``: JSON files (or plain values) for the step's inputs."""
    parser = argparse.ArgumentParser(description=flow_fn.__doc__)
    _common(parser)
    for name in needs:
        parser.add_argument(f"--{name.replace('_', '-')}", required=True,
                            help=f"{name}: a JSON file written by the previous step (or a plain value)")
    parser.add_argument("--out", type=Path, help="write the step's result here as JSON")
    args = parser.parse_args()
    _quiet()
    kwargs = {}
    for name in needs:
        value = getattr(args, name)
        kwargs[name] = json.loads(Path(value).read_text()) if Path(value).is_file() else value
    result = flow_fn(**kwargs, config=args.config, overrides=_config_overrides(args))
    text = json.dumps(result, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    """The main job: run retrain-pipeline, then say where to look and print the champion."""
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description="Run the MEND retraining pipeline (prepare-data, train-editor, evaluate, register, promote).",
    )
    _common(parser)
    parser.add_argument("--data", action="append", default=[], metavar="PATH_OR_S3_URI",
                        help="editing data to train on (repeatable); default: the bundled zsRE sample")
    parser.add_argument("--no-resume", action="store_true", help="retrain from scratch")
    args = parser.parse_args(argv)
    _quiet()
    from flows.retrain_pipeline import retrain_pipeline

    started = time.monotonic()
    summary = retrain_pipeline(config=args.config, overrides=_config_overrides(args), data=args.data or None,
                               resume=not args.no_resume)
    wall = time.monotonic() - started
    print_summary(summary, wall)
    return 0


def print_summary(s: dict[str, Any], wall_s: float) -> None:
    py = Path(sys.executable)
    tracking = s["tracking_uri"]
    prefect_home = os.environ.get("PREFECT_HOME")
    api = os.environ.get("PREFECT_API_URL")
    champion = s.get("champion_metrics") or {}
    print()
    print("=" * 78)
    print(f"retrain-pipeline finished in {wall_s / 60:.1f} min: {s['model_name']} v{s['version']} -> {s['alias']}")
    print(f"  {s['reason']}")
    if s.get("champion_version"):
        figures = "  ".join(f"{k}={v:.3f}" for k, v in champion.items())
        print(f"champion: models:/{s['model_name']}@champion (v{s['champion_version']}): {figures}")
    for row in s["evaluation"]["tables"]:
        print(f"  {row['method']:>5}: edit_success={row.get('edit_success', float('nan')):.3f} "
              f"generalization={row.get('generalization', float('nan')):.3f} "
              f"locality={row.get('locality', float('nan')):.3f} "
              f"({row.get('seconds_per_edit', float('nan')):.2f} s/edit)")
    print("where to look:")
    print(f"  report:      {s['report']}")
    if tracking.startswith(("http://", "https://")):
        print(f"  MLflow UI:   {tracking}")
    else:
        print(f"  MLflow UI:   {py.parent / 'mlflow'} ui --backend-store-uri {tracking}   -> http://127.0.0.1:5000")
    if api:
        print(f"  Prefect UI:  {api.removesuffix('/api')}")
    else:
        home = f"PREFECT_HOME={prefect_home} " if prefect_home else ""
        print(f"  Prefect UI:  {home}{py.parent / 'prefect'} server start   -> http://127.0.0.1:4200")
    print(f"  load it:     mlflow.pyfunc.load_model('models:/{s['model_name']}@{s['alias']}')")
    print("=" * 78)
