"""The `mend` command line on a tiny model saved to a folder."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from mend.cli import app
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


def _zsre_file(path, records):
    rows = [{"subject": "x", "src": r.prompt, "pred": "", "rephrase": r.rephrases[0], "alt": r.target,
             "answers": ["y"], "loc": "nq question: " + r.locality[0].prompt, "loc_ans": r.locality[0].answer,
             "cond": ""} for r in records]
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def model_dir(tmp_path):
    model = tiny_model("llama")
    model.model.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_train_then_eval_from_the_command_line(tmp_path, model_dir):
    train = _zsre_file(tmp_path / "train.json", synthetic_records(30, seed=0))
    test = _zsre_file(tmp_path / "test.json", synthetic_records(4, seed=1))
    config = {
        "model": str(model_dir),
        "editor": {"rank": 16, "down_init": "xavier", "edit_lr_init": 1e-3},
        "data": {"train": [{"path": str(train)}], "val_fraction": 0.2},
        "lr": 1e-3, "lr_edit_lrs": 1e-3, "n_loc": 1,
        "max_steps": 6, "val_every": 3, "val_size": 4, "patience": 6, "checkpoint_every": 3,
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "config.yaml"), "--set", "max_steps=6"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "best" / "editor.safetensors").exists()

    result = runner.invoke(app, ["eval", "--editor", str(tmp_path / "run" / "best"), "--model", str(model_dir),
                                 "--data", str(test), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "mend-single-k1.json").read_text())
    assert summary["n"] == 4 and 0.0 <= summary["locality"] <= 1.0


def test_bad_override_is_a_clear_error(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {train: [{path: x}]}\n")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--set", "novalue"])
    assert result.exit_code != 0
    assert "key=value" in result.output
