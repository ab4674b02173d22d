"""The corrections queue: submit, validate, apply with an editor, publish, roll back,
and say where the reported corrections stand."""

from mend.corrections.apply import ApplyConfig, ApplyReport, ApplyRun, apply_pending, recover
from mend.corrections.lease import Lease, LeaseHeldError, break_lease, inspect_lease
from mend.corrections.policy import DEFAULT_REGRESSION_PROBES, AcceptancePolicy
from mend.corrections.queue import STATES, CorrectionQueue, Problem, SubmitReport
from mend.corrections.rollback import rollback
from mend.corrections.schema import (
    Correction,
    InvalidCorrection,
    LocalityCheck,
    Submission,
    normalise,
    parse_correction,
    read_submissions,
)
from mend.corrections.status import QueueStatus, queue_status
from mend.corrections.versions import ActiveEntry, VersionConflictError, VersionStore

__all__ = [
    "DEFAULT_REGRESSION_PROBES",
    "STATES",
    "AcceptancePolicy",
    "ActiveEntry",
    "ApplyConfig",
    "ApplyReport",
    "Correction",
    "CorrectionQueue",
    "InvalidCorrection",
    "Lease",
    "LeaseHeldError",
    "LocalityCheck",
    "Problem",
    "QueueStatus",
    "SubmitReport",
    "Submission",
    "VersionConflictError",
    "VersionStore",
    "ApplyRun",
    "apply_pending",
    "break_lease",
    "inspect_lease",
    "normalise",
    "parse_correction",
    "queue_status",
    "read_submissions",
    "recover",
    "rollback",
]
