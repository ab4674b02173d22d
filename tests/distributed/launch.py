"""Run ``mend.distributed.train`` on several CPU ranks as a subprocess of the tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mend.distributed.world import SHM_DIR, SHM_SEGMENT
from tests.distributed.workload import DS_CONFIGS, REPO

# Each rank gets one thread: two ranks share the CI machine's two cores.
RANK_THREADS = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_segments_left(port: str) -> None:
    """DeepSpeed's CPU allreduce leaves a shared-memory segment per rank unless the run
    removes it (``mend.distributed.world.leave_world``): none of this run's may be left."""
    left = sorted(SHM_DIR.glob(f"{SHM_SEGMENT}_{os.getuid()}_*_{port}_*")) if SHM_DIR.is_dir() else []
    assert not left, f"the run left shared memory behind: {[p.name for p in left]}"


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": RANK_THREADS, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    # DeepSpeed compiles its CPU communication op on first use (~40 s); keep the build.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    return env


def train(
    config: Path, ds_config: str, report: Path, *, ranks: int = 2, launcher: str = "deepspeed",
    sets: list[str] = (), ds_sets: list[str] = (), resume: bool = False, timeout: int = 600,
) -> dict[int, dict]:
    """Launch a run and return each rank's report (``--report``)."""
    args = ["--config", str(config), "--deepspeed", str(DS_CONFIGS / f"{ds_config}.json"),
            "--report", str(report)]
    for item in sets:
        args += ["--set", item]
    for item in ds_sets:
        args += ["--ds-set", item]
    if not resume:
        args.append("--no-resume")
    port = str(free_port())
    if launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
               "--master_port", port, "--module", "mend.distributed.train", *args]
    elif launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", port, "-m", "mend.distributed.train", *args]
    else:
        raise ValueError(launcher)
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{launcher} run failed with code {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
            f"\n--- stderr\n{done.stderr[-6000:]}"
        )
    _no_segments_left(port)
    return {r: json.loads((report / f"rank{r}.json").read_text()) for r in range(ranks)}


def run_script(script: Path, *args: str, ranks: int = 2, timeout: int = 300) -> None:
    """Run a Python script on ``ranks`` CPU ranks with the deepspeed launcher."""
    port = str(free_port())
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_port", port, str(script), *args]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{script.name} failed with code {done.returncode}\n{done.stdout[-4000:]}"
                             f"\n{done.stderr[-6000:]}")
    _no_segments_left(port)
