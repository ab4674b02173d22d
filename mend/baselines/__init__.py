"""Weight-space baselines keyed at the subject: MEMIT and AlphaEdit.

Both write each fact's value at a middle layer into the MLP output projections of a few
blocks, keyed by that projection's input at the subject's last token, and protect
ordinary inputs with the keys' second moment on generic text: MEMIT through a
regularised least-squares solve, AlphaEdit by projecting the change onto the null space
of that second moment. They are :class:`~mend.evaluation.methods.EditMethod` s, so the
evaluation runner scores them like MEND and the fine-tuning baselines.
"""

from mend.baselines.alphaedit import AlphaEditMethod
from mend.baselines.config import AlphaEditConfig, MemitConfig, ValueConfig
from mend.baselines.covariance import SecondMoments
from mend.baselines.memit import MemitMethod
from mend.baselines.values import ValueStore

__all__ = ["AlphaEditConfig", "AlphaEditMethod", "MemitConfig", "MemitMethod", "SecondMoments", "ValueConfig",
           "ValueStore"]
