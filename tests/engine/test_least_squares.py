"""Least-squares aggregation: the solve, re-solving on select/concat, gradients."""

import json

import pytest
import torch

from mend import Edit, Editor, EditorConfig
from mend.aggregations.least_squares import key_shifts, solve_shift
from tests.support.tiny_models import REQUESTS, tiny_model

LS = EditorConfig(rank=16, edit_lr_init=1e-2, aggregation="least_squares")


def _dense(delta):
    return delta.v.T @ delta.u  # (d_out, d_in)


@pytest.mark.parametrize("n", [3, 40])  # fewer rows than d_in (n x n solve) and more (dense)
@pytest.mark.parametrize("with_penalty", [False, True])
def test_solution_is_the_relative_ridge_regression(n, with_penalty):
    torch.manual_seed(0)
    keys, shifts = torch.randn(n, 8) * 5, torch.randn(n, 12)
    lam = torch.tensor(0.5)
    a = torch.randn(8, 8)
    penalty = a @ a.T / 8 + 0.1 * torch.eye(8) if with_penalty else torch.eye(8)
    precond = torch.linalg.inv(penalty) if with_penalty else None
    got = _dense(solve_shift(keys, shifts, lam, precond)).T  # (d_in, d_out)
    ridge = lam * keys.square().sum() / 8  # relative to the rows' energy per dimension
    expected = torch.linalg.solve(keys.T @ keys + ridge * penalty, keys.T @ shifts)
    assert torch.allclose(got, expected, atol=1e-4)


def test_regulariser_is_relative_to_the_keys_scale():
    torch.manual_seed(0)
    keys, shifts = torch.randn(5, 8), torch.randn(5, 3)
    lam = torch.tensor(0.3)
    # Scaling every key by c scales the change by 1/c: each key's own shift is unchanged.
    small = keys @ _dense(solve_shift(keys, shifts, lam)).T
    large = (keys * 100) @ _dense(solve_shift(keys * 100, shifts, lam)).T
    assert torch.allclose(small, large, atol=1e-4)


def test_penalty_protects_common_directions():
    torch.manual_seed(0)
    common = torch.zeros(8)
    common[0] = 1.0
    # Generic inputs all share direction 0; the edit key has a part along it too.
    generic = torch.randn(200, 8) * 0.1 + 3 * common
    second = generic.T @ generic / 200
    penalty = second / (second.trace() / 8)
    key = torch.randn(1, 8) + 3 * common
    shift = torch.ones(1, 4)
    plain = _dense(solve_shift(key, shift, torch.tensor(0.01))).T
    guarded = _dense(solve_shift(key, shift, torch.tensor(0.01), torch.linalg.inv(penalty))).T
    assert (generic @ guarded).norm() < 0.5 * (generic @ plain).norm()
    assert torch.allclose(key @ guarded, shift, atol=0.2)


def test_small_regulariser_maps_each_key_to_its_shift():
    torch.manual_seed(0)
    keys, shifts = torch.randn(4, 16), torch.randn(4, 6)
    delta = solve_shift(keys, shifts, torch.tensor(1e-6))
    assert torch.allclose(keys @ _dense(delta).T, shifts, atol=1e-3)


def _editor(model, config=LS):
    torch.manual_seed(0)
    editor = Editor.for_model(model, config)
    editor.fit_normalization(model, *REQUESTS["causal"])
    return editor


def test_select_and_concat_re_solve(tmp_path):
    model = tiny_model("llama")
    editor = _editor(model)
    prompts, targets = REQUESTS["causal"]
    both = editor.edit(model, prompts, targets, ["a", "b"])
    assert both.aggregation == "least_squares"
    alone = editor.edit(model, prompts[1:], targets[1:], ["b"])
    name = model.targets[0].module_name
    # Removing a request is a re-solve over the rest, which equals solving for it alone.
    assert torch.allclose(both.select([1]).dense()[name], alone.dense()[name], atol=1e-5)
    first = editor.edit(model, prompts[:1], targets[:1], ["a"])
    joined = Edit.concat([first, alone])
    assert torch.allclose(joined.dense()[name], both.dense()[name], atol=1e-5)
    # ... and is not the sum of the two separate solves.
    assert not torch.allclose(both.dense()[name], first.dense()[name] + alone.dense()[name], atol=1e-5)
    both.save(tmp_path / "e")
    loaded = Edit.load(tmp_path / "e", model)
    assert loaded.aggregation == "least_squares"
    assert torch.allclose(loaded.select([1]).dense()[name], alone.dense()[name], atol=1e-5)


def test_least_squares_edit_applies_and_removes_exactly():
    model = tiny_model("gpt2")
    editor = _editor(model)
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        before = model.task.logits(model.model, batch)
    edit = editor.edit(model, prompts, targets)
    with edit.applied(), torch.no_grad():
        during = model.task.logits(model.model, batch)
    with torch.no_grad():
        after = model.task.logits(model.model, batch)
    assert (during - before).abs().max() > 1e-4 and torch.equal(before, after)


def test_meta_gradient_reaches_network_lrs_and_regularisers():
    from mend.training.sampler import StepSampler
    from mend.training.step import MetaStep
    from tests.support.synthetic import synthetic_records

    model = tiny_model("llama")
    for p in model.model.parameters():
        p.requires_grad_(False)
    editor = _editor(model)
    sampler = StepSampler(synthetic_records(8), model.task, n_edits=4, n_loc=2)
    out = MetaStep(model, editor, 1.0, 1.0)(sampler.batch(0), update_stats=True)
    out.loss.backward()
    assert editor.log_lambdas.grad.abs().sum() > 0
    assert editor.edit_lrs.grad.abs().sum() > 0
    assert editor.nets["32x64"].blocks[0].up.grad.abs().sum() > 0


def _covariance_editor(model):
    torch.manual_seed(0)
    editor = Editor.for_model(model, LS.model_copy(update={"key_preconditioning": "covariance"}))
    prompts, targets = REQUESTS["causal"]
    editor.fit_normalization(model, prompts, targets)
    editor.fit_key_covariance(model, prompts)
    return editor


def test_key_penalty_is_saved_beside_the_edit_and_required_on_load(tmp_path):
    model = tiny_model("llama")
    prompts, targets = REQUESTS["causal"]
    edit = _covariance_editor(model).edit(model, prompts, targets)
    edit.save(tmp_path / "e")
    name = model.targets[0].module_name
    assert torch.allclose(Edit.load(tmp_path / "e").dense()[name], edit.dense()[name], atol=1e-6)
    (tmp_path / "e" / "key_precond.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="key preconditioner"):
        Edit.load(tmp_path / "e")


def test_an_edit_written_with_the_old_penalty_file_name_still_loads(tmp_path):
    # Before the rename the preconditioners sat in penalty.safetensors under "penalty".
    model = tiny_model("llama")
    prompts, targets = REQUESTS["causal"]
    edit = _covariance_editor(model).edit(model, prompts, targets)
    edit.save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "edit.json").read_text())
    (tmp_path / "e" / "key_precond.safetensors").rename(tmp_path / "e" / "penalty.safetensors")
    meta["penalty"] = {**meta.pop("key_precond"), "file": "penalty.safetensors"}
    (tmp_path / "e" / "edit.json").write_text(json.dumps(meta))
    name = model.targets[0].module_name
    assert torch.allclose(Edit.load(tmp_path / "e").dense()[name], edit.dense()[name], atol=1e-6)


def test_scaling_the_regularisers_trades_edit_strength_for_locality():
    model = tiny_model("gpt2")
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        before = model.task.logits(model.model, batch)

    def moved(factor: float) -> float:
        editor = _editor(model)
        editor.scale_regularisers(factor)
        shifts = key_shifts(editor, editor._capture(model, prompts, targets).factors)
        assert all(torch.isclose(ks.lam, torch.tensor(factor)) for ks in shifts.values())
        with editor.edit(model, prompts, targets).applied(), torch.no_grad():
            return (model.task.logits(model.model, batch) - before).abs().mean().item()

    assert moved(10.0) < moved(1.0) < moved(0.1)
    with pytest.raises(ValueError, match="positive"):
        _editor(model).scale_regularisers(0.0)
    with pytest.raises(ValueError, match="least-squares"):
        Editor.for_model(model, EditorConfig(rank=16)).scale_regularisers(2.0)


@pytest.mark.parametrize("aggregation", ["least_squares", "sum"])
def test_further_passes_are_captured_on_the_edited_model_and_stay_per_request(aggregation):
    model = tiny_model("llama")
    editor = _editor(model, LS.model_copy(update={"aggregation": aggregation}))
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        before = model.task.logits(model.model, batch)
    once = editor.edit(model, prompts, targets, ["a", "b"])
    with once.applied():
        further = editor.edit(model, prompts, targets, ["a", "b"])
    twice = editor.edit(model, prompts, targets, ["a", "b"], passes=2)
    name = model.targets[0].module_name
    # Pass two is the editor's answer on the model with pass one applied; nothing stays hooked.
    assert torch.allclose(twice.dense()[name], once.with_pass(further).dense()[name], atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model.task.logits(model.model, batch), before)
    if aggregation == "sum":  # stacked: the two passes' changes add up
        assert torch.allclose(twice.dense()[name], once.dense()[name] + further.dense()[name], atol=1e-5)
    else:  # one solve over both passes' rows, not the sum of two solves
        assert len(twice.change.shifts[name].keys) == 2 * len(once.change.shifts[name].keys)
        assert not torch.allclose(twice.dense()[name], once.dense()[name] + further.dense()[name], atol=1e-5)
    # Each request keeps both passes' rows: taking one out takes out all of its rows.
    only_b = twice.select([1])
    expected = editor.edit(model, prompts[1:], targets[1:], ["b"], passes=1)
    rows = (only_b.change.shifts[name].keys if aggregation == "least_squares" else only_b.deltas[name].u).shape[0]
    single = (expected.change.shifts[name].keys if aggregation == "least_squares" else expected.deltas[name].u).shape[0]
    assert rows == 2 * single
    with pytest.raises(ValueError, match="at least 1"):
        editor.edit(model, prompts, targets, passes=0)
    with pytest.raises(ValueError, match="same requests"):
        once.with_pass(editor.edit(model, prompts[:1], targets[:1]))


def _key_shifts(n, seed, precond=None):
    from mend.aggregations import KeyShifts

    generator = torch.Generator().manual_seed(seed)
    keys, shifts = torch.randn(n, 8, generator=generator) * 3, torch.randn(n, 5, generator=generator)
    return KeyShifts(keys, shifts, torch.zeros(n, dtype=torch.long), torch.tensor(0.2), precond)


@pytest.mark.parametrize("with_penalty", [False, True])
def test_normal_equations_of_parts_add_up_to_the_solve_over_all_rows(with_penalty):
    from mend.aggregations import KeyShifts

    a = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    precond = torch.linalg.inv(a @ a.T / 8 + 0.1 * torch.eye(8)) if with_penalty else None
    active = KeyShifts.cat([_key_shifts(30, 0, precond), _key_shifts(20, 1, precond)])
    active.solve()  # more rows than dimensions: solved from, and keeps, its normal equations
    assert active.normal is not None
    new = _key_shifts(3, 2, precond)
    combined = KeyShifts.cat([active, new])
    assert combined.normal is not None
    rows = KeyShifts.cat([_key_shifts(30, 0, precond), _key_shifts(20, 1, precond), _key_shifts(3, 2, precond)])
    assert rows.normal is None
    assert torch.allclose(_dense(combined.solve()), _dense(rows.solve()), atol=1e-5)
    # Taking rows out re-computes from the rows that are left.
    kept = combined.select(torch.arange(len(combined.keys)) >= 30)
    assert kept.normal is None
    assert torch.allclose(_dense(kept.solve()), _dense(KeyShifts.cat([_key_shifts(20, 1, precond), new]).solve()),
                          atol=1e-5)


def test_dense_solve_is_differentiable_and_keeps_nothing_that_carries_gradients():
    ks = _key_shifts(30, 0)
    ks.shifts.requires_grad_(True)
    ks.lam.requires_grad_(True)
    _dense(ks.solve()).square().sum().backward()
    assert ks.shifts.grad is not None and ks.shifts.grad.abs().sum() > 0
    assert ks.lam.grad is not None and ks.lam.grad != 0
    assert ks.normal is None


def test_a_least_squares_edit_is_solved_only_when_its_change_is_needed(monkeypatch):
    from mend.aggregations import KeyShifts

    model = tiny_model("llama")
    editor = _editor(model)
    prompts, targets = REQUESTS["causal"]
    solves = []
    solve = KeyShifts.solve
    monkeypatch.setattr(KeyShifts, "solve", lambda self: solves.append(1) or solve(self))
    edit = editor.edit(model, prompts, targets, ["a", "b"])
    parts = [edit.select([0]), edit.select([1])]
    both = Edit.concat(parts)
    assert solves == [] and "not yet solved" in repr(both)
    with both.applied(model):
        assert len(solves) == len(model.targets)


def test_a_solved_edit_serves_the_same_change_without_its_keys_and_refuses_to_re_solve(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model("llama")
    prompts, targets = REQUESTS["causal"]
    edit = _covariance_editor(model).edit(model, prompts, targets, ["a", "b"])
    edit.solved().save(tmp_path / "solved")
    assert not (tmp_path / "solved" / "key_precond.safetensors").exists()
    assert not any(k.endswith(".keys") for k in load_file(tmp_path / "solved" / "edit.safetensors"))
    solved = Edit.load(tmp_path / "solved")
    assert solved.aggregation == "least_squares" and not solved.change.per_request
    assert [r.request_id for r in solved.requests] == ["a", "b"]
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        with edit.applied(model):
            expected = model.task.logits(model.model, batch)
        with solved.applied(model):
            got = model.task.logits(model.model, batch)
    assert torch.allclose(got, expected, atol=1e-5)
    for refused in (lambda: solved.select([0]), lambda: Edit.concat([edit, solved]), lambda: solved.with_pass(edit),
                    lambda: edit.with_pass(solved)):
        with pytest.raises(ValueError, match="solved least_squares edit"):
            refused()
    summed = _editor(model, EditorConfig(rank=16)).edit(model, prompts, targets)
    assert summed.solved() is summed


@pytest.mark.parametrize(("fmt", "readable"), [("mend-edit/1", False), ("mend-edit/2", True)])
def test_older_least_squares_edit_formats(tmp_path, fmt, readable):
    import json

    model = tiny_model("llama")
    editor = _editor(model)
    prompts, targets = REQUESTS["causal"]
    edit = editor.edit(model, prompts, targets)
    meta_path = edit.save(tmp_path / "e") / "edit.json"
    meta = json.loads(meta_path.read_text())
    del meta["solved"]  # as format 2 wrote it
    meta_path.write_text(json.dumps({**meta, "format": fmt}))
    if readable:
        name = model.targets[0].module_name
        assert torch.allclose(Edit.load(tmp_path / "e").dense()[name], edit.dense()[name], atol=1e-6)
    else:  # solved with an absolute regulariser: its figures would mean something else now
        with pytest.raises(ValueError, match="absolute regulariser"):
            Edit.load(tmp_path / "e")
