"""The pyfunc editor's contract, and the promote flow moving aliases both ways."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mend import Editor, EditorConfig
from mend.models.editable import EditableModel
from mend.serving.pyfunc import log_editor_model
from tests.flows.helpers import save_tiny_model, tiny_config


@pytest.fixture
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # Artifacts in tmp_path too (the default location is ./mlruns in the working directory).
    MlflowClient(uri).create_experiment("pyfunc", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment("pyfunc")
    yield uri
    mlflow.set_tracking_uri(None)


def identity_editor(model: EditableModel, directory) -> Editor:
    editor = Editor.for_model(model, EditorConfig(rank=16, down_init="xavier", edit_lr_init=1e-2))
    editor.fit_normalization(model, ["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean"])
    editor.save(directory)
    return editor


def test_pyfunc_applies_all_requests_together_and_leaves_the_model_unchanged(tmp_path, tracking, tiny_model_dir):
    base = EditableModel.load(tiny_model_dir)
    editor = identity_editor(base, tmp_path / "editor")
    with mlflow.start_run():
        info = log_editor_model(tmp_path / "editor", base_model=str(tiny_model_dir), registered_model_name="pyf",
                                max_new_tokens=3)
    assert info.signature.inputs.input_names() == ["prompt", "target", "query"]
    assert info.saved_input_example_info is not None
    served = mlflow.pyfunc.load_model("models:/pyf/1")

    questions = ["The capital of France is", "Water boils at", "Who wrote Hamlet?"]
    before = served.predict(pd.DataFrame({"prompt": questions}))["answer"].tolist()
    assert before == [a.strip() for a in base.generate(questions, 3)]

    request = pd.DataFrame({"prompt": ["The capital of France is", "Who wrote Hamlet?", "Water boils at"],
                            "target": ["Rome", "Jean Darrieux", None],
                            "query": ["What is the capital of France?", None, None]})
    got = served.predict(request, params={"max_new_tokens": 5})
    with editor.edit(base, ["The capital of France is", "Who wrote Hamlet?"], ["Rome", "Jean Darrieux"]).applied():
        expected = base.generate(["What is the capital of France?", "Who wrote Hamlet?", "Water boils at"], 5)
    assert got["answer"].tolist() == [a.strip() for a in expected]
    # The edit was removed again: the served model answers as the base model does.
    assert served.predict(pd.DataFrame({"prompt": questions}))["answer"].tolist() == before
    with pytest.raises(Exception, match="prompt"):
        served.predict(pd.DataFrame({"query": ["x"]}))


def test_pyfunc_refuses_a_base_model_with_other_weights(tmp_path, tracking, tiny_model_dir):
    base = EditableModel.load(tiny_model_dir)
    identity_editor(base, tmp_path / "editor")
    other = save_tiny_model(tmp_path / "other-weights", seed=1)
    with mlflow.start_run():
        log_editor_model(tmp_path / "editor", base_model=str(other), registered_model_name="mismatch")
    with pytest.raises(Exception, match="fingerprint"):
        mlflow.pyfunc.load_model("models:/mismatch/1")


# -- promotion ------------------------------------------------------------------------------


def fake_candidate(client: MlflowClient, name: str, metrics: dict[str, float], fingerprint: str = "fp-a") -> str:
    """A registered version whose run carries ``mend.<metric>`` values (no model files needed)."""
    with mlflow.start_run() as run:
        mlflow.log_metrics({f"mend.{k}": v for k, v in metrics.items()})
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/editor", run_id=run.info.run_id,
                                          tags={"base_model.fingerprint": fingerprint})
    return str(version.version)


@pytest.mark.usefixtures("prefect_server")
def test_promote_flow_moves_aliases_both_ways_and_records_why(tmp_path, tracking, tiny_model_dir, tiny_data):
    from flows.promote import promote

    cfg = tiny_config(tmp_path, tiny_model_dir, [str(tiny_data)], promotion={
        "metrics": {"edit_success": {"min_delta": 0.0, "min_value": 0.5},
                    "generalization": {"min_delta": -0.02, "min_value": 0.3},
                    "locality": {"min_delta": -0.01, "min_value": 0.8}}},
        mlflow={"tracking_uri": tracking, "experiment": "pyfunc", "model_name": "gated"})
    client = MlflowClient(tracking)
    name = "gated"

    too_weak = fake_candidate(client, name, {"edit_success": 0.4, "generalization": 0.9, "locality": 0.99})
    result = promote(name, too_weak, cfg)
    assert (result["alias"], result["champion_version"]) == ("challenger", None)
    assert "edit_success 0.4000 < floor 0.5000" in client.get_model_version(name, too_weak).tags["promotion.reason"]

    first = fake_candidate(client, name, {"edit_success": 0.9, "generalization": 0.8, "locality": 0.95})
    assert promote(name, first, cfg)["alias"] == "champion"
    assert str(client.get_model_version_by_alias(name, "champion").version) == first

    # Better edits but worse locality than the threshold allows: challenger, champion unchanged.
    worse = fake_candidate(client, name, {"edit_success": 0.97, "generalization": 0.85, "locality": 0.9})
    result = promote(name, worse, cfg)
    assert (result["alias"], result["champion_version"]) == ("challenger", first)
    tags = client.get_model_version(name, worse).tags
    assert tags["promotion.decision"] == "challenger" and tags["promotion.compared_to"] == first
    assert "locality 0.9000 vs champion 0.9500" in tags["promotion.reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == first
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse
    assert "Promotion: challenger" in client.get_model_version(name, worse).description

    # Better within every threshold: the new champion; the old one records its successor.
    better = fake_candidate(client, name, {"edit_success": 0.93, "generalization": 0.79, "locality": 0.945})
    result = promote(name, better, cfg)
    assert result["alias"] == "champion" and result["promote"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == better
    assert client.get_model_version(name, first).tags["promotion.superseded_by"] == better
    assert promote(name, better, cfg)["reason"] == f"v{better} is already the champion"

    # Thresholds are configuration: with a looser locality tolerance the same candidate would win.
    loose = promote(name, worse, cfg, overrides={"promotion.metrics.locality.min_delta": -0.1})
    assert loose["alias"] == "champion" and "edit_success" in loose["reason"]

    # A champion for another base model is never replaced automatically.
    foreign = fake_candidate(client, name, {"edit_success": 1.0, "generalization": 1.0, "locality": 1.0}, "fp-b")
    result = promote(name, foreign, cfg)
    assert result["alias"] == "challenger" and "another base model" in result["reason"]
