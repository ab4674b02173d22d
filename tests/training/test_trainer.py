"""Meta-training on a tiny model: it learns, resumes exactly, stops early, fails loudly."""

import json

import pytest
import torch

from mend.editor.editor import Editor
from mend.training.checkpoint import load_optimizer, save_optimizer
from mend.training.config import TrainConfig
from mend.training.data import TrainingData
from mend.training.trainer import Trainer, TrainingDivergedError, make_optimizer
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


def _config(tmp_path, **overrides) -> TrainConfig:
    base = {
        "data": {"train": [{"path": "unused"}]},
        "editor": {"rank": 32, "down_init": "xavier", "edit_lr_init": 1e-4},
        "lr": 1e-3,
        "lr_edit_lrs": 1e-3,
        "n_loc": 2,
        "max_steps": 40,
        "val_every": 20,
        "val_size": 12,
        "patience": 1000,
        "checkpoint_every": 10,
        "output_dir": str(tmp_path / "run"),
        "c_edit": 1.0,
    }
    base.update(overrides)
    return TrainConfig.model_validate(base)


def _data() -> TrainingData:
    return TrainingData(synthetic_records(60, seed=0), synthetic_records(12, seed=1), [])


def test_meta_training_raises_held_out_edit_success(tmp_path):
    model = tiny_model("llama")
    trainer = Trainer(_config(tmp_path, max_steps=60, val_every=60), model, _data())
    trainer.editor.fit_normalization(model, *zip(*[(r.prompt, r.target) for r in _data().train[:8]], strict=True))
    before = trainer.validate()
    lrs_before = trainer.editor.edit_lrs.detach().clone()
    result = trainer.train(resume=False)
    after = result.history[-1]
    assert after["val/edit_acc"] > before["val/edit_acc"] + 0.3, (before, after)
    # The edit learning rates are really trained (MEND's own lr optimiser never moved them).
    assert (trainer.editor.edit_lrs.detach() - lrs_before).abs().max() > 1e-3
    assert (result.best_dir / "editor.safetensors").exists()
    assert Editor.load(result.best_dir).base_model["name"] == "tiny-llama"


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    full = Trainer(_config(tmp_path / "a", max_steps=30, val_every=10), tiny_model("gpt2"), _data())
    full.train(resume=False)

    first = Trainer(_config(tmp_path / "b", max_steps=20, val_every=10), tiny_model("gpt2"), _data())
    first.train(resume=False)
    # A new process would rebuild everything from the config and the checkpoint.
    second = Trainer(_config(tmp_path / "b", max_steps=30, val_every=10), tiny_model("gpt2"), _data())
    assert second.resume()
    assert second.state.step == 20
    second.train(resume=False)

    for key, value in full.editor.state_dict().items():
        assert torch.allclose(value, second.editor.state_dict()[key], atol=1e-6), key
    assert full.editor.nets["32x128"].norm.count.item() == second.editor.nets["32x128"].norm.count.item()


def test_resume_refuses_a_different_configuration(tmp_path):
    Trainer(_config(tmp_path, max_steps=10, val_every=10), tiny_model("gpt2"), _data()).train(resume=False)
    other = Trainer(_config(tmp_path, max_steps=10, val_every=10, lr=0.5), tiny_model("gpt2"), _data())
    with pytest.raises(ValueError, match="different configuration"):
        other.resume()


def test_early_stopping_really_triggers(tmp_path):
    # With zero learning rates nothing can improve after the first validation.
    config = _config(tmp_path, lr=0.0, lr_edit_lrs=0.0, max_steps=200, val_every=5, patience=10)
    result = Trainer(config, tiny_model("gpt2"), _data()).train(resume=False)
    assert result.stopped == "early_stopping"
    assert result.steps == 15
    assert result.best_step == 5


def test_time_budget_stops_training(tmp_path):
    config = _config(tmp_path, max_steps=10_000, val_every=5, max_minutes=0.05)
    result = Trainer(config, tiny_model("gpt2"), _data()).train(resume=False)
    assert result.stopped == "time_budget"
    # It stopped at the first step past the 3 s budget (a step takes milliseconds),
    # and the state it stopped in was validated and considered for the best editor.
    assert 3.0 <= result.train_minutes * 60 < 30.0
    assert result.history[-1]["step"] == result.steps
    assert result.history[-1]["elapsed_s"] >= 3.0


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    config = _config(tmp_path, max_steps=40, val_every=10, checkpoint_every=10)
    trainer = Trainer(config, tiny_model("gpt2"), _data())
    real_step = trainer.step_fn.__call__

    def poisoned(batch, update_stats):
        out = real_step(batch, update_stats)
        if trainer.state.step >= 13:
            out.loss = out.loss * float("nan")
            out.metrics["loss"] = float("nan")
        return out

    trainer.step_fn = poisoned
    with pytest.raises(TrainingDivergedError, match="diverged at step 13") as err:
        trainer.train(resume=False)
    assert str(trainer.last_dir) in str(err.value)
    state = json.loads((trainer.last_dir / "state.json").read_text())
    assert state["step"] == 10
    good = Editor.load(trainer.last_dir)
    assert all(torch.isfinite(v).all() for v in good.state_dict().values())


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    editor = Editor.for_model(tiny_model("gpt2"), _config(tmp_path).editor)
    optimizer = make_optimizer(editor, _config(tmp_path))
    for p in editor.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    save_optimizer(optimizer, tmp_path)
    fresh = make_optimizer(editor, _config(tmp_path))
    load_optimizer(fresh, tmp_path)
    a, b = optimizer.state_dict(), fresh.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][index][key])


def test_init_editor_warm_starts_a_least_squares_editor_from_a_summed_one(tmp_path):
    model = tiny_model("llama")
    source = Trainer(_config(tmp_path / "sum", max_steps=10, val_every=10), model, _data())
    result = source.train(resume=False)
    trained = Editor.load(result.best_dir)

    ls = _config(tmp_path / "ls", init_editor=str(result.best_dir), n_edits=4,
                 editor={"rank": 32, "down_init": "xavier", "edit_lr_init": 1e-4, "aggregation": "least_squares"})
    warm = Trainer(ls, model, _data()).editor
    assert warm.least_squares
    for key, value in trained.state_dict().items():
        assert torch.equal(warm.state_dict()[key], value), key
    assert torch.equal(warm.log_lambdas.detach(), torch.zeros_like(warm.log_lambdas))
    # The regularisers train at their own rate (at the network's 1e-4 they never moved).
    trainer = Trainer(ls.model_copy(update={"max_steps": 5, "lr_lambdas": 0.05}), model, _data())
    trainer.train(resume=False)
    assert trainer.editor.log_lambdas.detach().abs().max() > 0.05

    other = _config(tmp_path / "bad", init_editor=str(result.best_dir),
                    editor={"rank": 16, "down_init": "xavier", "edit_lr_init": 1e-4})
    with pytest.raises(ValueError, match="rank"):
        Trainer(other, model, _data())


def test_validation_applies_edits_together_as_in_training(tmp_path):
    # A many-edit editor picked by its single-edit validation loss is picked for the
    # wrong regime: validation groups val_n_edits (default n_edits) edits per batch.
    model = tiny_model("gpt2")
    pairs = list(zip(*[(r.prompt, r.target) for r in _data().train[:8]], strict=True))

    def validate(config: TrainConfig) -> dict:
        trainer = Trainer(config, model, _data())
        trainer.editor.fit_normalization(model, *pairs)
        return trainer.validate()

    single = validate(_config(tmp_path / "a", n_edits=4, val_n_edits=1))
    grouped = validate(_config(tmp_path / "b", n_edits=4))
    # 12 validation records: 12 single edits or 3 groups of 4, each record edited once.
    assert grouped["val/edit_rows"] == pytest.approx(4 * single["val/edit_rows"])


def test_init_editor_carries_over_to_other_matrices(tmp_path):
    # Down projections of all 4 layers, from an editor of the last 3 layers' MLPs: the
    # networks come by shape, layer 0 takes layer 1's entries, layers 1-3 their own.
    model = tiny_model("llama")
    result = Trainer(_config(tmp_path / "mlp", max_steps=10, val_every=10), model, _data()).train(resume=False)
    trained = Editor.load(result.best_dir)
    down = r"model\.layers\.\d+\.mlp\.down_proj"
    editor_cfg = {"rank": 32, "down_init": "xavier", "edit_lr_init": 1e-4, "patterns": [down]}
    wide = _config(tmp_path / "wide", init_editor=str(result.best_dir), editor=editor_cfg, max_steps=3)
    # As `mend train` loads it: the model wrapped for the configured matrices.
    trainer = Trainer(wide, model.retargeted([down]), _data())
    editor = trainer.editor
    assert [t.module_name for t in editor.targets] == [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    key = editor.targets[0].shape_key
    net, src = editor.nets[key], trained.nets[key]
    for block, src_block in zip(net.blocks, src.blocks, strict=True):
        assert torch.equal(block.up, src_block.up) and torch.equal(block.down, src_block.down)
        for layer in range(4):
            src_mode = trained._mode_of[f"model.layers.{max(layer, 1)}.mlp.down_proj"]
            assert torch.equal(block.mode_scale[layer], src_block.mode_scale[src_mode])
    for layer in range(4):
        source_lr = trained.edit_lrs[trained._lr_index[f"model.layers.{max(layer, 1)}.mlp.down_proj"]]
        assert editor.edit_lrs[layer] == source_lr
    # Its factors' moments differ: statistics start afresh and the first batches refill them.
    assert net.norm.count.item() == 0
    trainer.train(resume=False)
    assert net.norm.count.item() > 0

    embeddings = {"rank": 32, "down_init": "xavier", "patterns": [r"lm_head"]}
    bad = _config(tmp_path / "bad", init_editor=str(result.best_dir), editor=embeddings)
    with pytest.raises(ValueError, match="no matrix of that shape"):
        Trainer(bad, model, _data())
