"""The pipeline's scope step: the meta-trained editor gets a scope model, so that the
champion it registers edits ``scoped`` (each correction switched on only for the
requests in its scope, :mod:`mend.scope`) and a queue of corrections applied with it
publishes what lands instead of a sum that interferes.

    editors/<run_id>/scoped-<hash>/        the scoped editor: the editor's files and scope/
    editors/<run_id>/scoped-<hash>.json    what the fit measured (written last: marks it done)

``<hash>`` covers the scope settings and the trained editor's weights (their checksum as
the store recorded it), so a re-run with the same editor and settings finds the finished
fit instead of fitting again, while other settings, or a run whose longer training kept
another best editor, never reuse it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mend.data import EditRecord
from mend.editor.editor import Editor
from mend.models.editable import EditableModel
from mend.pipeline.config import ScopeSpec
from mend.pipeline.training_runs import short_hash
from mend.scope.fit import fit_choosing_layer
from mend.scope.routing import lowest_edited_block
from mend.storage import ArtifactNotFoundError, ArtifactStore


def scoped_prefix(store: ArtifactStore, run_id: str, editor_prefix: str, spec: ScopeSpec) -> str:
    """Where the editor stored under ``editor_prefix``, fitted a scope with ``spec``, lives."""
    weights = store.info(f"{editor_prefix}/editor.safetensors").sha256
    if weights is None:  # not written by this library: no identity to reuse a fit by
        raise ValueError(f"{editor_prefix}/editor.safetensors has no recorded checksum")
    return f"editors/{run_id}/scoped-{short_hash({'scope': spec.model_dump(mode='json'), 'editor': weights})}"


def fit_scoped_editor(model: EditableModel, editor: Editor, train: Sequence[EditRecord],
                      val: Sequence[EditRecord], spec: ScopeSpec) -> dict[str, Any]:
    """Fit a scope model on ``train`` (its block and threshold chosen on ``val``), attach
    it to ``editor`` and return what the fit measured (JSON-ready).

    Only records with rephrases take part: a rephrase is what shows the scope where a
    correction's requests lie. Raises ValueError when either split has none.
    """
    fit_on = [r for r in train if r.rephrases]
    check_on = [r for r in val if r.rephrases]
    if not fit_on or not check_on:
        raise ValueError(f"fitting a scope needs records with rephrases in the train and val splits "
                         f"(train has {len(fit_on)}, val {len(check_on)}); set scope.enabled: false to skip it")
    lowest = lowest_edited_block(t.module_name for t in model.targets)
    too_high = [layer for layer in spec.layers if layer >= lowest]
    if too_high:
        # Routing decides from the scope's block before any edited block runs.
        raise ValueError(f"scope.layers {too_high} are not below the lowest block the editor changes ({lowest})")
    started = time.perf_counter()
    # The held-out set's name keys its false-positive rate in the report: "val", the split.
    choice = fit_choosing_layer(model, {"train": fit_on}, {"val": check_on}, spec.layers, dim=spec.dim,
                                max_false_positive_rate=spec.max_fpr, steps=spec.steps, seed=spec.seed,
                                relation_test=spec.relation)
    editor.attach_scope(choice.scope)
    return {**choice.summary(), "n_train": len(fit_on), "n_val": len(check_on),
            "seconds": round(time.perf_counter() - started, 1)}


def finished_scope(store: ArtifactStore, prefix: str) -> dict[str, Any] | None:
    """The record of the finished fit stored under ``prefix`` (:func:`scoped_prefix`), if any."""
    try:
        return store.get_json(prefix + ".json")
    except ArtifactNotFoundError:
        return None


def publish_scoped(store: ArtifactStore, prefix: str, scoped_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Upload the scoped editor to ``prefix`` (:func:`scoped_prefix`), then its record (last:
    it marks the fit finished)."""
    store.upload_dir(scoped_dir, prefix)
    record = {**report, "editor_prefix": prefix, "editor_uri": store.uri_for(prefix)}
    store.put_json(prefix + ".json", record)
    return record
