"""Scoring helpers."""

from mend.evaluation.scoring import by_length


def test_by_length_returns_results_in_the_original_order():
    prompts = ["a" * n for n in (5, 1, 9, 3, 7)]
    answers = ["x"] * 5
    seen = []

    def fn(p, a):
        seen.append([len(x) for x in p])
        return [len(x) for x in p]

    assert by_length(fn, prompts, answers, chunk=2) == [5, 1, 9, 3, 7]
    assert seen == [[1, 3], [5, 7], [9]]  # chunks of similar length
