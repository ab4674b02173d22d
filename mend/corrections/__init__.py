"""The corrections queue: submit, validate, apply with an editor, publish, roll back."""

from mend.corrections.apply import ApplyConfig, ApplyReport, ApplyRun, apply_pending, recover
from mend.corrections.lease import Lease, LeaseHeldError
from mend.corrections.policy import DEFAULT_REGRESSION_PROBES, AcceptancePolicy
from mend.corrections.queue import STATES, CorrectionQueue, SubmitReport
from mend.corrections.rollback import rollback
from mend.corrections.schema import (
    Correction,
    InvalidCorrection,
    LocalityCheck,
    parse_correction,
    read_submissions,
)
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
    "SubmitReport",
    "VersionConflictError",
    "VersionStore",
    "ApplyRun",
    "apply_pending",
    "parse_correction",
    "read_submissions",
    "recover",
    "rollback",
]
