"""`mend eval --method memit|alphaedit` on a tiny model saved to a folder."""

import json

import pytest
from typer.testing import CliRunner

from mend.cli import app
from tests.baselines.support import facts
from tests.support.tiny_models import tiny_model


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEND_CACHE", str(tmp_path / "cache"))  # C's cache stays in the test's folder
    model = tiny_model("llama")
    model.model.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _zsre_file(path, records):
    rows = [{"subject": r.subject, "src": r.prompt, "pred": "", "rephrase": r.rephrases[0], "alt": r.target,
             "answers": ["y"], "loc": "nq question: " + r.locality[0].prompt, "loc_ans": r.locality[0].answer,
             "cond": ""} for r in records]
    path.write_text(json.dumps(rows))
    return path


def _wikibio_file(path):
    from mend.testing.tokenizer import CORPUS

    rows = [{"prompt": a, "target_new": b, "subject": "x", "locality_prompt": b, "locality_ground_truth": a}
            for a, b in zip(CORPUS, CORPUS[1:] + CORPUS[:1], strict=True)]
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_eval_runs_a_baseline_with_its_settings(tmp_path, model_dir, method):
    data = _zsre_file(tmp_path / "facts.json", facts())
    generic = _wikibio_file(tmp_path / "wikibio.json")
    result = CliRunner().invoke(app, [
        "eval", "--method", method, "--model", str(model_dir), "--data", str(data), "--mode", "batch", "--k", "2",
        "--covariance-data", str(generic), "--value-cache", str(tmp_path / "values.safetensors"),
        "--set", "layers=[1,2]", "--set", "values.steps=5", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / f"{method}-batch-k2.json").read_text())
    assert summary["n"] == 2 and 0.0 <= summary["locality"] <= 1.0
    assert (tmp_path / "values.safetensors").is_file()


def test_a_baseline_without_generic_text_or_with_a_bad_setting_is_refused(tmp_path, model_dir):
    data = _zsre_file(tmp_path / "facts.json", facts())
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--method", "memit", "--model", str(model_dir), "--data", str(data)])
    assert result.exit_code != 0 and "generic" in result.output
    generic = _wikibio_file(tmp_path / "wikibio.json")
    result = runner.invoke(app, ["eval", "--method", "memit", "--model", str(model_dir), "--data", str(data),
                                 "--covariance-data", str(generic), "--set", "lam=-1"])
    assert result.exit_code != 0 and "lam" in result.output
