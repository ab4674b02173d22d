"""Time the main job (`make run` = `python -m flows`) as a new user runs it.

    python bench/main_job.py                 # in a fresh copy of the checkout -> bench/results/main_job.json
    python bench/main_job.py --in-place      # in this checkout (reuses its .prefect, mlflow.db, artifacts)

The fresh copy holds the files a clone has (git-tracked plus new, not ignored), lives in a
temporary directory with no ``../shared`` beside it, and gets an empty model cache
(``MEND_CACHE``), so the GGUF conversion, the temporary Prefect API, training, evaluation
and registration are all inside the measured wall time. Only installing the Python
packages is not: the copy runs with this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, write_result  # noqa: E402


def fresh_copy(target: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in-place", action="store_true", help="run in this checkout instead of a fresh copy")
    parser.add_argument("--keep", action="store_true", help="keep the fresh copy (printed at the end)")
    parser.add_argument("args", nargs="*", help="extra arguments for python -m flows")
    args = parser.parse_args()

    scratch = None
    if args.in_place:
        workdir, env = ROOT, dict(os.environ)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="mend-main-job-"))
        workdir = fresh_copy(scratch / "mend-ops")
        assert not (workdir.parent / "shared").exists()
        env = {**os.environ, "MEND_CACHE": str(scratch / "cache")}
        for name in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MEND_STORAGE_URI"):
            env.pop(name, None)
    command = [sys.executable, "-m", "flows", *args.args]
    load = os.getloadavg()
    print(f"running {' '.join(command)} in {workdir} (load average {load[0]:.2f})", flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=workdir, env=env, check=True)
    wall = time.monotonic() - started

    summary = json.loads((workdir / "runs" / "pipeline" / "summary.json").read_text())
    tables = {row["method"]: {k: v for k, v in row.items() if k != "method"} for row in summary["evaluation"]["tables"]}
    write_result("main_job", {
        "wall_s": round(wall, 1),
        "wall_min": round(wall / 60, 2),
        "budget_min": 30,
        "command": "make run  (= python -m flows)",
        "where": "fresh copy of the checkout, no ../shared, empty model cache" if scratch else "this checkout",
        "load_average_at_start": [round(x, 2) for x in load],
        "registered_model": summary["model_name"],
        "version": summary["version"],
        "alias": summary["alias"],
        "decision": summary["reason"],
        "champion_version": summary["champion_version"],
        "champion_metrics": summary["champion_metrics"],
        "evaluation": tables,
        "multi_edit_curve": summary["evaluation"]["curve"],
        "n_eval_records": summary["evaluation"]["n_single"],
        "training": summary["training"],
        "scope": summary["scope"],
        "dataset": summary["dataset"],
    })
    if scratch and not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    elif scratch:
        print(f"fresh copy kept in {workdir}")


if __name__ == "__main__":
    main()
