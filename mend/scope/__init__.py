"""Scopes of corrections: which requests a correction applies to, decided in the forward pass.

- :mod:`mend.scope.model`: the learned embedding and its threshold (:class:`ScopeModel`)
- :mod:`mend.scope.states`: the base model's hidden states at the routing block
- :mod:`mend.scope.keys`: a correction's scope key
- :mod:`mend.scope.routing`: routing scoped edits per sequence (:class:`RoutedChanges`)
- :mod:`mend.scope.fit`: training a scope model on edit records
"""

from mend.scope.keys import correction_keys
from mend.scope.model import ScopeConfig, ScopeModel
from mend.scope.routing import RoutedChanges

__all__ = ["RoutedChanges", "ScopeConfig", "ScopeModel", "correction_keys"]
