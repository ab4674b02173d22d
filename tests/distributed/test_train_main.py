"""The pipeline's launcher entry point under DeepSpeed trains on the splits it is given.

``mend.pipeline.train_main --deepspeed-config`` hands its prepared splits to
``mend.distributed.train.main(data=...)``; the training config here names data files
that do not exist, so a run that read them instead would fail.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from mend.pipeline.data import to_jsonl
from mend.testing.synthetic import synthetic_records
from tests.distributed import launch
from tests.distributed.workload import DS_CONFIGS, REPO, write_workload

pytestmark = pytest.mark.slow


def test_deepspeed_training_uses_the_pipelines_splits(tmp_path):
    config_path = write_workload(tmp_path / "workload", max_steps=4, val_every=2, checkpoint_every=2)
    config = yaml.safe_load(config_path.read_text())
    config["data"] = {"train": [{"path": str(tmp_path / "absent-train.json")}],
                      "validation": [{"path": str(tmp_path / "absent-val.json")}]}
    config["output_dir"] = str(tmp_path / "run")
    config_path.write_text(yaml.safe_dump(config))
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train.jsonl").write_bytes(to_jsonl(synthetic_records(24, seed=0)))
    (splits / "val.jsonl").write_bytes(to_jsonl(synthetic_records(6, seed=1)))

    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1",
           "--master_port", str(launch.free_port()), "--module", "mend.pipeline.train_main",
           "--config", str(config_path), "--splits", str(splits),
           "--deepspeed-config", str(DS_CONFIGS / "zero2_fp32.json")]
    done = subprocess.run(cmd, cwd=REPO, env=launch._env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "train-summary.json").read_text())
    assert summary["steps"] == 4
    assert (tmp_path / "run" / "best" / "editor.json").exists()
