"""The chunked, decoupled meta-step computes exactly the joint loss's gradient."""

import uuid

import pytest
import torch

from mend import Editor, EditorConfig
from mend.capture import capture_factors
from mend.deltas import DeltaHooks
from mend.models.tasks import per_example_nll
from mend.training.losses import kl_on_scored, token_hits
from mend.training.sampler import StepSampler
from mend.training.step import MetaStep
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


def _setup(aggregation):
    model = tiny_model("llama")
    for p in model.model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=1e-2, aggregation=aggregation))
    records = synthetic_records(12)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    batch = StepSampler(records, model.task, n_edits=5, n_loc=4).batch(0)
    return model, editor, batch


def _joint_grads(model, editor, batch, c_edit, c_loc):
    """The obvious way: one graph through the editor and the language model."""
    task, hf = model.task, model.model
    with torch.no_grad():
        pre_loc = task.logits(hf, batch.loc)
    capture = capture_factors(hf, task, editor.targets, batch.edit, editor.config.token_mode)
    deltas = editor.deltas_from(capture.factors)
    key = uuid.uuid4().hex
    DeltaHooks.of(hf).add(key, deltas)
    try:
        post_equiv = task.logits(hf, batch.equiv)
        post_loc = task.logits(hf, batch.loc)
    finally:
        DeltaHooks.of(hf).remove(key)
    loss = c_edit * per_example_nll(post_equiv, batch.equiv.scored_labels).mean() + c_loc * kl_on_scored(
        pre_loc, post_loc, batch.loc.scored_labels
    )
    editor.zero_grad()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in editor.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_chunked_step_gradient_equals_joint_gradient(aggregation, chunk_size):
    model, editor, batch = _setup(aggregation)
    loss, expected = _joint_grads(model, editor, batch, 0.1, 1.0)
    editor.zero_grad()
    out = MetaStep(model, editor, 0.1, 1.0, chunk_size=chunk_size)(batch, update_stats=False)
    out.loss.backward()
    assert out.metrics["loss"] == pytest.approx(loss, rel=1e-5)
    for name, grad in expected.items():
        got = dict(editor.named_parameters())[name].grad
        # Equal up to float32 rounding: the vocabulary projection runs on each chunk's scored
        # rows, so its sums are blocked differently than over the whole batch.
        assert torch.allclose(got, grad, rtol=1e-4, atol=1e-6), name


def test_validation_step_needs_no_graph():
    model, editor, batch = _setup("sum")
    editor.eval()
    with torch.no_grad():
        out = MetaStep(model, editor, 0.1, 1.0, chunk_size=2)(batch, update_stats=False)
    assert not out.loss.requires_grad
    # "pre" is the unedited model's accuracy on the equivalence inputs, whatever the editor.
    with torch.no_grad():
        unedited = model.task.logits(model.model, batch.equiv)
    hits = token_hits(unedited, batch.equiv.scored_labels)[0]
    assert out.metrics["edit_acc_pre"] == pytest.approx(hits.float().mean().item(), abs=1e-6)
