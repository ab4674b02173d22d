"""Prefect flows: thin wrappers over ``mend.pipeline``, ``mend.corrections`` and ``mend.registry``.

    prepare_data      flows/prepare_data.py:prepare_data
    train_editor      flows/train_editor.py:train_editor
    fit_scope         flows/fit_scope.py:fit_scope
    evaluate          flows/evaluate.py:evaluate
    register          flows/register.py:register
    promote           flows/promote.py:promote
    retrain_pipeline  flows/retrain_pipeline.py:retrain_pipeline (all of the above)
    apply_corrections flows/apply_corrections.py:apply_corrections (the corrections queue)

``python -m flows`` runs the whole pipeline; ``python -m flows.<step>`` one step.

Importing the package sets local defaults for Prefect (see :mod:`flows.env`) where
nothing is configured: every flow module imports Prefect, and the package is imported
first, whichever way a flow is started.
"""

from flows.env import apply_local_defaults

apply_local_defaults()
