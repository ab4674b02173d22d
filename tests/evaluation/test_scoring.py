"""Scoring helpers."""

from mend.models.batching import by_length


def test_by_length_returns_results_in_the_original_order():
    prompts = ["a" * n for n in (5, 1, 9, 3, 7)]
    answers = ["x"] * 5
    seen = []

    def fn(p, a):
        seen.append([len(x) for x in p])
        return [len(x) for x in p]

    assert by_length(fn, prompts, answers, chunk=2) == [5, 1, 9, 3, 7]
    assert seen == [[1, 3], [5, 7], [9]]  # chunks of similar length


def test_scoring_by_length_in_chunks_matches_one_batch():
    import pytest
    import torch

    from mend.evaluation.scoring import answer_predictions, score_targets
    from tests.support.tiny_models import tiny_model

    model = tiny_model("llama")
    prompts = ["The capital of France is", "Two plus two", "The author of Romeo and Juliet is", "Water is"]
    answers = ["Paris", "equals four", "William Shakespeare", "wet"]
    whole, chunked = score_targets(model, prompts, answers), score_targets(model, prompts, answers, chunk=3)
    assert chunked.exact == whole.exact
    assert chunked.token_acc == pytest.approx(whole.token_acc)
    assert chunked.nll == pytest.approx(whole.nll, abs=1e-5)
    for a, b in zip(answer_predictions(model, prompts, answers, chunk=3),
                    answer_predictions(model, prompts, answers), strict=True):
        assert torch.equal(a, b)
    assert score_targets(model, [], [], chunk=3).token_acc == []
    assert answer_predictions(model, [], [], chunk=3) == []
