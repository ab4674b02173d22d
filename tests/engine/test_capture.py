"""The captured factors reproduce autograd's weight gradients, for every family."""

import pytest
import torch

from mend.capture import capture_factors
from mend.models.tasks import per_example_nll
from tests.support.tiny_models import FAMILIES, REQUESTS, tiny_model


def _autograd_weight_grads(model, batch):
    weights = {t.module_name: model.model.get_submodule(t.module_name).weight for t in model.targets}
    for w in weights.values():
        w.requires_grad_(True)
    try:
        logits = model.task.logits(model.model, batch)
        loss = per_example_nll(logits, batch.scored_labels).sum()
        grads = torch.autograd.grad(loss, list(weights.values()))
    finally:
        for w in weights.values():
            w.requires_grad_(False)
    return dict(zip(weights, grads, strict=True)), loss.detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_factors_reproduce_weight_gradient(family):
    model = tiny_model(family)
    for p in model.model.parameters():
        p.requires_grad_(False)
    prompts, targets = REQUESTS[model.kind]
    batch = model.task.batch(prompts, targets)
    expected, expected_loss = _autograd_weight_grads(model, batch)
    capture = capture_factors(model.model, model.task, model.targets, batch, token_mode="all")
    assert torch.allclose(capture.loss, expected_loss, atol=1e-6)
    for target in model.targets:
        f = capture.factors[target.module_name]
        grad = f.delta.T @ f.u  # (d_out, d_in)
        if target.layout == "conv1d":
            grad = grad.T
        ref = expected[target.module_name]
        assert torch.allclose(grad, ref, atol=1e-6, rtol=1e-4), target.module_name
        assert ref.abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_capture_works_with_trainable_base_and_leaves_no_grads(family):
    model = tiny_model(family)  # parameters require grad (a model as users load it)
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    capture = capture_factors(model.model, model.task, model.targets, batch)
    assert all(p.grad is None for p in model.model.parameters())
    assert all(f.rows > 0 for f in capture.factors.values())


def test_target_token_mode_keeps_only_scored_positions():
    model = tiny_model("llama")
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    all_tokens = capture_factors(model.model, model.task, model.targets, batch, token_mode="all")
    scored = capture_factors(model.model, model.task, model.targets, batch, token_mode="target")
    n_scored = int((batch.scored_labels != -100).sum())
    for name, f in scored.factors.items():
        assert f.rows == n_scored
        assert all_tokens.factors[name].rows >= f.rows
    # Each scored row is one of the all-token rows.
    name = model.targets[0].module_name
    full = all_tokens.factors[name].u
    assert all(((full - row).abs().sum(-1) == 0).any() for row in scored.factors[name].u)


def test_rows_remember_their_example():
    model = tiny_model("gpt2")
    prompts, targets = REQUESTS["causal"]
    batch = model.task.batch(prompts, targets)
    capture = capture_factors(model.model, model.task, model.targets, batch)
    for f in capture.factors.values():
        assert set(f.example.tolist()) == {0, 1}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_chunked_capture_equals_one_pass(family):
    from mend.capture import Capture

    model = tiny_model(family)
    prompts, targets = REQUESTS["causal"]
    whole = capture_factors(model.model, model.task, model.targets, model.task.batch(prompts, targets))
    parts = [
        capture_factors(model.model, model.task, model.targets, model.task.batch(prompts[i : i + 1], targets[i : i + 1]))
        for i in range(len(prompts))
    ]
    joined = Capture.cat(parts)
    for name, f in whole.factors.items():
        g = joined.factors[name]
        assert torch.equal(f.example, g.example)
        assert torch.allclose(f.u, g.u, atol=1e-5) and torch.allclose(f.delta, g.delta, atol=1e-5)
    assert torch.allclose(whole.per_example_loss, joined.per_example_loss, atol=1e-5)


def test_chunks_captured_out_of_order_equal_one_pass():
    """The editor captures chunks of similar length: numbered back, the rows are those of
    one pass over the requests in their own order."""
    from mend.capture import Capture

    model = tiny_model("llama")
    prompts = ["The capital of France is", "A", "Water boils at a temperature of", "Cats"]
    targets = [" Paris", " b", " one hundred degrees", " purr"]
    whole = capture_factors(model.model, model.task, model.targets, model.task.batch(prompts, targets))
    chunks = [[3, 1], [2, 0]]
    parts = [capture_factors(model.model, model.task, model.targets,
                             model.task.batch([prompts[i] for i in c], [targets[i] for i in c])) for c in chunks]
    joined = Capture.cat(parts, chunks)
    for name, f in whole.factors.items():
        g = joined.factors[name]
        assert torch.equal(f.example, g.example)
        assert torch.allclose(f.u, g.u, atol=1e-5) and torch.allclose(f.delta, g.delta, atol=1e-5)
    assert torch.allclose(whole.per_example_loss, joined.per_example_loss, atol=1e-5)
