"""The corrections commands, end to end on a local store."""

import json

from typer.testing import CliRunner

from mend.cli import app
from mend.corrections import VersionStore
from mend.storage import open_store
from tests.support.corrections import correction_dicts, tiny_editing_setup


def test_submit_apply_list_show_rollback(tmp_path):
    model, editor = tiny_editing_setup()
    model.model.save_pretrained(tmp_path / "model")
    model.tokenizer.save_pretrained(tmp_path / "model")
    editor.save(tmp_path / "editor")
    items = correction_dicts(3)
    lines = "\n".join(json.dumps(i) for i in items) + "\n{broken\n"
    (tmp_path / "fixes.jsonl").write_text(lines)
    store = ["--store", str(tmp_path / "store")]
    runner = CliRunner()

    result = runner.invoke(app, ["corrections", "submit", str(tmp_path / "fixes.jsonl"), *store])
    assert result.exit_code == 1  # one line was dead-lettered
    assert "3 pending" in result.output and "line 4 is not JSON" in result.output

    result = runner.invoke(app, ["corrections", "list", "--state", "dead-letter", *store])
    assert result.exit_code == 0 and "line 4" in result.output

    # A random tiny model needs a lenient acceptance policy.
    (tmp_path / "apply.yaml").write_text(
        "batch_size: 8\npolicy: {min_edit_success: 0.0, require_exact: false, min_locality: 0.0, min_regression: 0.0}\n"
    )
    apply = ["corrections", "apply", "--editor", str(tmp_path / "editor"), "--model", str(tmp_path / "model"),
             "--config", str(tmp_path / "apply.yaml"), *store]
    result = runner.invoke(app, [*apply, "--regulariser-scale", "0"])  # flags are validated as the config is
    assert result.exit_code == 2 and "regulariser_scale" in result.output
    result = runner.invoke(app, [*apply, "--passes", "0"])
    assert result.exit_code == 2 and "passes" in result.output
    result = runner.invoke(app, [*apply, "--passes", "2"])
    assert result.exit_code == 0, result.output
    assert "published versions [1]" in result.output
    assert VersionStore(open_store(tmp_path / "store")).manifest(1)["passes"] == 2

    result = runner.invoke(app, ["corrections", "list", *store])
    assert "applied      3" in result.output and "dead-letter  1" in result.output

    result = runner.invoke(app, ["corrections", "rollback", "--id", items[0]["id"], "--reason", "wrong", *store])
    assert result.exit_code == 0 and "published version 2" in result.output
    result = runner.invoke(app, ["corrections", "show", *store])
    manifest = json.loads(result.output)
    assert manifest["rollback"]["removed"] == [items[0]["id"]]

    # Older versions' adapters can go; any version's is rebuilt from its deltas.
    result = runner.invoke(app, ["corrections", "prune-adapters", "--keep", "1", *store])
    assert result.exit_code == 0 and "versions [1]" in result.output
    assert VersionStore(open_store(tmp_path / "store")).adapter(1) is None
    result = runner.invoke(app, ["corrections", "adapter", "1", "--out", str(tmp_path / "adapter"), *store])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    result = runner.invoke(app, ["corrections", "prune-adapters", "--keep", "0", *store])
    assert result.exit_code != 0
