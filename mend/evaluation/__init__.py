"""Evaluation of edits: metrics, methods (MEND, FT, FT+L) and the runner.

The exports load on first use: engine modules use :mod:`mend.evaluation.scoring`, which
the methods here use in turn (:mod:`mend.scope.landing` among them), so importing the
package must not import the methods.
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mend.evaluation.methods import EditMethod, FineTuneMethod, MendMethod
    from mend.evaluation.runner import METRICS, EvalReport, aggregate, evaluate

_WHERE = {
    "EditMethod": "mend.evaluation.methods",
    "FineTuneMethod": "mend.evaluation.methods",
    "MendMethod": "mend.evaluation.methods",
    "METRICS": "mend.evaluation.runner",
    "EvalReport": "mend.evaluation.runner",
    "aggregate": "mend.evaluation.runner",
    "evaluate": "mend.evaluation.runner",
}

__all__ = ["METRICS", "EditMethod", "EvalReport", "FineTuneMethod", "MendMethod", "aggregate", "evaluate"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'mend.evaluation' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
