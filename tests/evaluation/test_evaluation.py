"""The evaluation runner: metric definitions, modes, baselines and outputs."""

import json

import pytest
import torch

from mend import Editor, EditorConfig
from mend.data.records import EditRecord, LocalityProbe
from mend.evaluation import FineTuneMethod, MendMethod, evaluate
from mend.evaluation.scoring import agreement, generated_exact, score_targets
from tests.support.synthetic import synthetic_records
from tests.support.tiny_models import tiny_model


class NoEdit:
    """A method that changes nothing: post-edit metrics must equal pre-edit ones."""

    name = "none"

    def apply(self, model, records):
        class Undo:
            def remove(self):
                return None

        return Undo()


def test_teacher_forced_scores_match_argmax_definition():
    model = tiny_model("llama")
    prompts, targets = ["The capital of France is"], ["Paris and Rome"]
    scores = score_targets(model, prompts, targets)
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        logits = model.task.logits(model.model, batch)
    labels = batch.scored_labels[0]
    hits = (logits[0].argmax(-1) == labels)[labels != -100]
    assert scores.token_acc[0] == pytest.approx(hits.float().mean().item())
    assert scores.exact[0] == bool(hits.all())


def test_no_edit_keeps_locality_perfect_and_success_at_pre_level():
    model = tiny_model("gpt2")
    records = synthetic_records(4)
    report = evaluate(NoEdit(), model, records, progress=False)
    assert report.summary["locality"] == 1.0 and report.summary["locality_em"] == 1.0
    assert report.summary["edit_success"] == pytest.approx(report.summary["edit_success_pre"])
    assert len(report.rows) == 4


@pytest.mark.parametrize("mode,k", [("single", 1), ("batch", 2), ("sequential", 2)])
def test_modes_restore_the_model_after_each_group(mode, k):
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    records = synthetic_records(4)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    probe = model.task.batch(["Who wrote Hamlet?"], ["William"])
    with torch.no_grad():
        before = model.task.logits(model.model, probe)
    report = evaluate(MendMethod(editor), model, records, mode=mode, k=k, progress=False)
    with torch.no_grad():
        after = model.task.logits(model.model, probe)
    assert torch.equal(before, after)
    assert {r["group"] for r in report.rows} == set(range(4 // k))
    assert report.summary["edit_success"] > report.summary["edit_success_pre"]


def test_a_sample_of_each_group_is_scored_with_the_whole_group_edited():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    records = synthetic_records(8)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    edited: list[int] = []

    class Counting(MendMethod):
        def apply(self, model, group):
            edited.append(len(group))
            return super().apply(model, group)

    full = evaluate(Counting(editor), model, records, mode="batch", k=4, progress=False)
    sampled = evaluate(Counting(editor), model, records, mode="batch", k=4, progress=False, scored_per_group=2)
    assert edited == [4, 4, 4, 4]  # every record edited both times
    ids = [r.record_id for r in records]
    assert [r["record_id"] for r in sampled.rows] == [ids[0], ids[2], ids[4], ids[6]]
    by_id = {r["record_id"]: r for r in full.rows}
    for row in sampled.rows:  # the same group applied: the same scores
        assert row["edit_success"] == pytest.approx(by_id[row["record_id"]]["edit_success"])


def test_fine_tuning_baselines_reach_the_target_and_restore_weights():
    model = tiny_model("llama")
    records = synthetic_records(3)
    weights = {t.module_name: model.model.get_submodule(t.module_name).weight.clone() for t in model.targets}
    pool = [LocalityProbe("Water boils at", "100 degrees"), LocalityProbe("Who wrote Hamlet?", "William")]
    for method in (FineTuneMethod(lr=1e-2, max_steps=30),
                   FineTuneMethod(lr=1e-2, max_steps=30, c_loc=1.0, locality_pool=pool, name="ft_l")):
        report = evaluate(method, model, records, progress=False)
        assert report.summary["edit_success"] > 0.9, method.name
        for name, w in weights.items():
            assert torch.equal(model.model.get_submodule(name).weight, w)


def test_generated_exact_match_decodes_target_length():
    model = tiny_model("llama")
    record = EditRecord("r", "The capital of France is", "Rome and Paris")
    undo = FineTuneMethod(lr=1e-2, max_steps=50).apply(model, [record])
    try:
        assert generated_exact(model, [record.prompt], ["Rome and Paris"]) == [True]
        assert generated_exact(model, [record.prompt], ["Rome and"]) == [True]  # a prefix of the target
        assert generated_exact(model, [record.prompt], ["Rome and Rome"]) == [False]
    finally:
        undo.remove()


def test_agreement_counts_positions():
    a = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    b = [torch.tensor([1, 0, 3]), torch.tensor([4])]
    assert agreement(a, b) == (0.75, False)


def test_generation_records_report_perplexity_drawdown(tmp_path):
    model = tiny_model("gpt2")
    record = EditRecord("g1", "The capital of France is", "Paris, the capital of France.",
                        rephrases=("capital of France is",),
                        locality=(LocalityProbe("Water", "boils at 100 degrees Celsius"),), kind="generation")
    report = evaluate(NoEdit(), model, [record], progress=False)
    assert report.rows[0]["ppl_drawdown"] == pytest.approx(0.0)
    path = report.write(tmp_path)
    assert json.loads(path.read_text())["n"] == 1
    assert len((tmp_path / "none-single-k1.jsonl").read_text().splitlines()) == 1


def test_pipeline_evaluation_reports_progress_over_every_stage(capsys):
    from mend.pipeline.config import EvalSpec
    from mend.pipeline.evaluation import evaluate_candidate

    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=8))
    records = synthetic_records(8)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    spec = EvalSpec(methods=["mend"], batch_sizes=[1, 2], batch_methods=["mend"], generate=False)
    calls = []
    result = evaluate_candidate(model, editor, synthetic_records(4, seed=2), synthetic_records(4),
                                spec, progress=lambda what, fraction: calls.append((what, fraction)))
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # 4 single edits, then 4 edits in pairs (k=1 of the curve reuses the single edits): half-way
    # when the single edits are done.
    assert ("mend single edits", 0.5) in calls
    assert [w for w, _ in calls].index("mend 2 simultaneous edits") > [w for w, _ in calls].index("mend single edits")
    assert result["n_single"] == 4
    bar = capsys.readouterr().err
    assert "8/8 edits" in bar and "remaining" not in bar and "<" not in bar.split("8/8 edits")[-1]


def test_pipeline_evaluation_runs_the_baselines_on_fewer_records():
    from mend.pipeline.config import EvalSpec
    from mend.pipeline.evaluation import evaluate_candidate

    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=8))
    records = synthetic_records(8)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    spec = EvalSpec(n_records=4, baseline_records=2, methods=["mend", "ft"], batch_sizes=[1, 2],
                    batch_methods=["mend", "ft"], batch_records=4, generate=False, ft={"max_steps": 2})
    calls = []
    result = evaluate_candidate(model, editor, synthetic_records(6, seed=2), records, spec, show_bar=False,
                                progress=lambda what, fraction: calls.append(what))
    assert (result["n_single"], result["n_baseline"]) == (4, 2)
    assert (result["tables"]["mend"]["n"], result["tables"]["ft"]["n"]) == (4, 2)
    assert len(result["rows"]["ft"]) == 2
    # The curve's k=1 point for FT needs 4 records: run, not cut from the 2 single edits.
    assert {(c["method"], c["k"]): c["n"] for c in result["curve"]} == {
        ("mend", 1): 4, ("ft", 1): 4, ("mend", 2): 4, ("ft", 2): 4}
    assert "ft 1 simultaneous edits" in calls and "mend 1 simultaneous edits" not in calls
