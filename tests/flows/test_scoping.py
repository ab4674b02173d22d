"""The pipeline's scope step without Prefect: fit, attach, publish, find again."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mend import Editor, EditorConfig
from mend.pipeline import scoping
from mend.pipeline.config import ScopeSpec
from mend.storage import LocalStore
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model

SPEC = ScopeSpec(layers=[0], steps=30, dim=16)  # the tiny LLaMA edits blocks 1-3


def _editor(model) -> Editor:
    editor = Editor.for_model(model, EditorConfig(rank=8))
    records = synthetic_records(8)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    return editor


def test_the_scope_step_gives_the_editor_a_scope_chosen_on_val_and_publishes_it_once(tmp_path):
    model = tiny_model("llama")
    editor = _editor(model)
    report = scoping.fit_scoped_editor(model, editor, synthetic_records(24), synthetic_records(8, seed=1), SPEC)
    assert editor.config.aggregation == "scoped" and editor.scope is not None
    assert report["layer"] in SPEC.layers and editor.scope.config.layer == report["layer"]
    assert set(report["layer_choice"]) == {"0"} and (report["n_train"], report["n_val"]) == (24, 8)
    json.dumps(report)  # the flow persists it as JSON

    editor.save(tmp_path / "scoped")
    store = LocalStore(tmp_path / "store")
    trained = _editor(model)  # what train-editor published (summed)
    trained.save(tmp_path / "summed")
    store.upload_dir(tmp_path / "summed", "editors/run-1/best")
    prefix = scoping.scoped_prefix(store, "run-1", "editors/run-1/best", SPEC)
    assert prefix.startswith("editors/run-1/scoped-") and scoping.finished_scope(store, prefix) is None
    record = scoping.publish_scoped(store, prefix, tmp_path / "scoped", report)
    assert scoping.finished_scope(store, prefix) == record and record["editor_prefix"] == prefix
    # The same editor and settings find it again; other settings, another run, or other weights
    # under the same name (a longer run that kept another best editor) go elsewhere.
    assert scoping.scoped_prefix(store, "run-1", "editors/run-1/best", SPEC) == prefix
    assert scoping.scoped_prefix(store, "run-1", "editors/run-1/best", SPEC.model_copy(update={"steps": 31})) != prefix
    assert scoping.scoped_prefix(store, "run-2", "editors/run-1/best", SPEC) != prefix
    torch.nn.init.normal_(next(trained.parameters()))
    trained.save(tmp_path / "summed")
    store.upload_dir(tmp_path / "summed", "editors/run-1/best")
    assert scoping.scoped_prefix(store, "run-1", "editors/run-1/best", SPEC) != prefix
    store.download_dir(record["editor_prefix"], tmp_path / "fetched")
    loaded = Editor.load(tmp_path / "fetched")
    assert loaded.config.aggregation == "scoped" and loaded.scope.config.layer == report["layer"]


def test_a_scope_needs_rephrases_in_both_splits():
    model = tiny_model("llama")
    bare = [dataclasses.replace(r, rephrases=()) for r in synthetic_records(8, seed=1)]
    with pytest.raises(ValueError, match=r"val 0\); set scope.enabled: false"):
        scoping.fit_scoped_editor(model, _editor(model), synthetic_records(8), bare, SPEC)


def test_a_scope_block_the_model_does_not_have_is_named():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"scope layers \[-1\] are not blocks of this model"):
        scoping.fit_scoped_editor(model, _editor(model), synthetic_records(8), synthetic_records(4, seed=1),
                                  ScopeSpec(layers=[-1]))


def test_a_scope_block_at_or_above_an_edited_block_is_refused_before_fitting():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"scope.layers \[1\] are not below the lowest block the editor changes \(1\)"):
        scoping.fit_scoped_editor(model, _editor(model), synthetic_records(8), synthetic_records(4, seed=1),
                                  ScopeSpec(layers=[0, 1]))
