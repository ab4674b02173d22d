"""``python -m flows``: the main job. Runs retrain-pipeline (prepare-data, train-editor,
fit-scope, evaluate, register, promote), then says where to look and prints the champion.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from flows.cli import add_common_options, config_overrides, quiet


def main(argv: list[str] | None = None) -> int:
    """The main job: run retrain-pipeline, then say where to look and print the champion."""
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description="Run the MEND retraining pipeline (prepare-data, train-editor, fit-scope, evaluate, register, promote).",
    )
    add_common_options(parser)
    parser.add_argument("--data", action="append", default=[], metavar="PATH_OR_S3_URI",
                        help="editing data to train on (repeatable); default: the bundled zsRE sample")
    parser.add_argument("--no-resume", action="store_true", help="retrain from scratch")
    args = parser.parse_args(argv)
    quiet()
    from flows.retrain_pipeline import retrain_pipeline

    started = time.monotonic()
    summary = retrain_pipeline(config=args.config, overrides=config_overrides(args), data=args.data or None,
                               resume=not args.no_resume)
    wall = time.monotonic() - started
    print_summary(summary, wall)
    return 0


def print_summary(s: dict[str, Any], wall_s: float) -> None:
    from flows.retrain_pipeline import scope_line

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
        print(f"  {row['method']:>8}: edit_success={row.get('edit_success', float('nan')):.3f} "
              f"generalization={row.get('generalization', float('nan')):.3f} "
              f"locality={row.get('locality', float('nan')):.3f} "
              f"({row.get('seconds_per_edit', float('nan')):.2f} s/edit)")
    print(f"scope: {scope_line(s.get('scope'))}")
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
    print(f"  corrections: mend corrections submit FILE, then python -m flows.apply_corrections "
          f"--model-name {s['model_name']}; mend corrections status says how many are live")
    print("=" * 78)


if __name__ == "__main__":
    raise SystemExit(main())
