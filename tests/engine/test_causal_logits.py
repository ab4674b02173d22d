"""A task's logits: the vocabulary projection runs at the scored positions only, and
scoring reads those rows without laying them out."""

from __future__ import annotations

import pytest
import torch

from mend.models.tasks import IGNORE
from tests.support.tiny_models import tiny_model

PROMPTS = ["The capital of France is", "Who wrote Hamlet? It was written by", "Water boils at"]
TARGETS = ["Rome", "Jean Darrieux of Paris", "a hundred degrees"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_scored_positions_get_the_full_forwards_logits_and_the_projection_sees_no_other(family):
    model = tiny_model(family)
    batch = model.task.batch(PROMPTS, TARGETS)
    scored = batch.scored_labels != IGNORE
    head = model.model.get_output_embeddings()
    rows_projected: list[int] = []
    handle = head.register_forward_hook(lambda m, args, out: rows_projected.append(args[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            logits = model.task.logits(model.model, batch)
    finally:
        handle.remove()
    with torch.no_grad():
        full = model.model(**batch.inputs, use_cache=False).logits[:, batch.first_scored :]
    assert logits.shape == full.shape
    assert torch.allclose(logits[scored], full[scored], atol=1e-5)
    assert torch.count_nonzero(logits[~scored]) == 0
    assert rows_projected == [int(scored.sum())] and int(scored.sum()) < scored.numel()


def test_gradients_through_the_scored_positions_are_the_full_forwards():
    model = tiny_model("llama")
    batch = model.task.batch(PROMPTS, TARGETS)
    labels = batch.scored_labels
    weight = model.model.get_output_embeddings().weight

    def grad(logits):
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(),
                                                 reduction="none")
        (loss * (labels != IGNORE).flatten()).sum().backward()
        out = weight.grad.clone()
        weight.grad = None
        return out

    weight.requires_grad_(True)
    gathered = grad(model.task.logits(model.model, batch))
    full = grad(model.model(**batch.inputs, use_cache=False).logits[:, batch.first_scored :])
    assert torch.allclose(gathered, full, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "t5", "bert"])
def test_scored_logits_are_the_laid_out_logits_at_the_scored_positions(family):
    from mend.models.tasks import per_example_nll

    model = tiny_model(family)
    targets = ["1", "0", "1"] if family == "bert" else TARGETS  # a classifier's targets are labels
    batch = model.task.batch(PROMPTS, targets)
    labels = batch.scored_labels
    with torch.no_grad():
        laid_out = model.task.logits(model.model, batch)
        scored = model.task.scored(model.model, batch)
    mask = labels != IGNORE
    assert torch.allclose(scored.rows, laid_out[mask], atol=1e-5)
    assert torch.equal(scored.hits(), laid_out.argmax(-1)[mask] == labels[mask])
    assert torch.allclose(scored.nll(), per_example_nll(laid_out, labels), atol=1e-5)
    predictions = scored.predictions()
    assert [len(p) for p in predictions] == mask.sum(1).tolist()
    for i, p in enumerate(predictions):
        assert torch.equal(p, laid_out[i].argmax(-1)[mask[i]])
