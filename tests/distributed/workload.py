"""Where the distributed tests find the repository's DeepSpeed configurations, and the
on-disk workload they train (:mod:`mend.testing.workload`)."""

from pathlib import Path

from mend.testing.workload import write_workload

REPO = Path(__file__).resolve().parents[2]
DS_CONFIGS = REPO / "deepspeed_configs"

__all__ = ["DS_CONFIGS", "REPO", "write_workload"]
