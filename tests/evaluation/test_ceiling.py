"""The references of mend.evaluation.ceiling (run by bench.edits_ceiling): what the solve
reaches with ideal shifts, and what direct optimisation of the edited matrices reaches."""

import pytest
import torch

from mend.editor.editor import base_model_info
from mend.evaluation.ceiling import (
    DirectChange,
    SolvedShifts,
    edited_blocks,
    first_block,
    hidden_before,
    mlp_of_blocks,
    optimised_rows,
    starting_at,
)
from mend.models.tasks import per_example_nll
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


def _nll(model, records) -> torch.Tensor:
    batch = model.task.batch([r.prompt for r in records], [r.target for r in records])
    with torch.no_grad():
        return per_example_nll(model.task.logits(model.model, batch), batch.scored_labels)


def _frozen_llama():
    torch.manual_seed(0)
    model = tiny_model("llama")
    for p in model.model.parameters():
        p.requires_grad_(False)
    return model


def _weights(model) -> dict[str, torch.Tensor]:
    return {
        t.module_name: model.model.get_submodule(t.module_name).weight.detach().clone()
        for t in model.targets
    }


def test_starting_at_the_first_edited_block_gives_the_full_forward():
    model = tiny_model("llama")
    records = synthetic_records(6)
    batch = model.task.batch([r.prompt for r in records], [r.target for r in records])
    first = first_block(model)
    assert first == 1  # the last 3 of 4 blocks
    with torch.no_grad():
        full = model.task.logits(model.model, batch)
        with starting_at(model, first, hidden_before(model, batch, first)):
            assert len(model.model.model.layers) == 3
            truncated = model.task.logits(model.model, batch)
    assert len(model.model.model.layers) == 4
    torch.testing.assert_close(truncated, full)


def test_optimised_shifts_make_each_edit_hold_alone_and_solve_into_a_removable_edit():
    model = _frozen_llama()
    records = synthetic_records(4)
    before = _nll(model, records)
    rows, alone = optimised_rows(model, records, steps=40, lr=0.3, l2=1e-4)
    # A tiny random model's final norm bounds its logits: the NLL stays high, the argmax moves.
    assert alone["exact_match"] == 1.0
    assert alone["nll"] < before.mean().item() - 0.3
    batch = model.task.batch([r.prompt for r in records], [r.target for r in records])
    scored = batch.scored_masks["input"].sum(-1)
    for row, n in zip(rows, scored.tolist(), strict=True):
        assert {len(k) for k in row.keys.values()} == {n}
        assert {len(s) for s in row.shifts.values()} == {n}

    precond = {t.module_name: torch.eye(t.d_in) for t in model.targets}
    method = SolvedShifts(
        {r.record_id: row for r, row in zip(records, rows, strict=True)},
        precond,
        0.01,
        base_model_info(model),
    )
    applied = method.apply(model, records)
    assert _nll(model, records).mean() < before.mean()
    applied.remove()
    torch.testing.assert_close(_nll(model, records), before)


def test_direct_change_lowers_the_edit_loss_and_is_undone_exactly():
    model = _frozen_llama()
    records = synthetic_records(5)
    probes = [p for r in synthetic_records(8, seed=1) for p in r.locality]
    weights = _weights(model)
    before = _nll(model, records)
    snapshot = DirectChange(probes, c_loc=1.0, steps=30, lr=3e-2).apply(model, records)
    assert _nll(model, records).mean() < before.mean() - 0.3
    assert not all(torch.equal(weights[n], w) for n, w in _weights(model).items())
    snapshot.remove()
    for name, w in _weights(model).items():
        assert torch.equal(weights[name], w)
        assert not model.model.get_submodule(name).weight.requires_grad


def test_a_wider_direct_change_edits_the_mlp_of_the_named_blocks_and_is_undone_exactly():
    model = _frozen_llama()
    wide = mlp_of_blocks(model, "0-3")
    assert edited_blocks(model) == [1, 2, 3]
    assert edited_blocks(wide) == [0, 1, 2, 3] and first_block(wide) == 0
    assert len(wide.targets) == 12  # gate, up and down of each block
    records = synthetic_records(5)
    probes = [p for r in synthetic_records(8, seed=1) for p in r.locality]
    weights = _weights(wide)
    before = _nll(wide, records)
    snapshot = DirectChange(probes, c_loc=1.0, steps=30, lr=3e-2).apply(wide, records)
    changed = [n for n, w in _weights(wide).items() if not torch.equal(weights[n], w)]
    assert any(".layers.0." in n for n in changed)  # the block the default set leaves alone
    assert _nll(wide, records).mean() < before.mean() - 0.3
    snapshot.remove()
    for name, w in _weights(wide).items():
        assert torch.equal(weights[name], w)


@pytest.mark.parametrize("blocks", ["2-1", "0-4", "-1-2", "3", "a-b"])
def test_block_ranges_outside_the_model_are_refused(blocks):
    with pytest.raises(ValueError, match="not a range of this model's decoder blocks"):
        mlp_of_blocks(_frozen_llama(), blocks)
