"""Evaluation of edits: metrics, methods (MEND, FT, FT+L) and the runner."""

from mend.evaluation.methods import EditMethod, FineTuneMethod, MendMethod
from mend.evaluation.runner import METRICS, EvalReport, aggregate, evaluate

__all__ = ["METRICS", "EditMethod", "EvalReport", "FineTuneMethod", "MendMethod", "aggregate", "evaluate"]
