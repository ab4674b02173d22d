"""Scopes of corrections: which requests a correction applies to, decided in the forward pass.

- :mod:`mend.scope.model`: the learned embedding and its threshold (:class:`ScopeModel`)
- :mod:`mend.scope.states`: the base model's hidden states at the routing block, and a
  correction's scope key made of them
- :mod:`mend.scope.routing`: routing scoped edits per sequence (:class:`RoutedChanges`)
- :mod:`mend.scope.fit`: training a scope model on edit records
"""

from mend.scope.model import ScopeConfig, ScopeModel
from mend.scope.routing import RoutedChanges
from mend.scope.states import correction_keys

__all__ = ["RoutedChanges", "ScopeConfig", "ScopeModel", "correction_keys"]
