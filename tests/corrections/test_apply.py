"""Applying queued corrections: publish, exactly once, policy, rollback."""

import pytest
import torch

from mend.corrections import (
    AcceptancePolicy,
    ApplyConfig,
    CorrectionQueue,
    VersionStore,
    apply_pending,
    rollback,
)
from mend.storage import open_store
from tests.support.corrections import LENIENT, correction_dicts, tiny_editing_setup


@pytest.fixture
def setup(tmp_path):
    model, editor = tiny_editing_setup()
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    return queue, model, editor


def _logits(model, prompts, targets):
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        return model.task.logits(model.model, batch)


def test_apply_publishes_a_complete_version_and_moves_corrections(setup):
    queue, model, editor = setup
    items = correction_dicts(5)
    assert len(queue.submit(items).accepted) == 5
    report = apply_pending(queue, model, editor, ApplyConfig(batch_size=3, policy=LENIENT))
    assert report.versions == [1, 2]
    assert sorted(report.applied) == sorted(i["id"] for i in items)
    assert queue.counts() == {"pending": 0, "applied": 5, "rejected": 0, "dead-letter": 0}
    versions = VersionStore(queue.store)
    manifest = versions.manifest(2)
    assert sorted(manifest["active_ids"]) == sorted(i["id"] for i in items)
    assert manifest["parent"] == 1 and manifest["adapter"]
    versions.verify(1)
    versions.verify(2)
    # The model was left as it was found.
    fresh, _ = tiny_editing_setup()
    assert torch.equal(_logits(model, ["Who wrote Hamlet?"], ["William"]),
                       _logits(fresh, ["Who wrote Hamlet?"], ["William"]))


def test_rerun_applies_nothing_twice(setup):
    queue, model, editor = setup
    queue.submit(correction_dicts(3))
    apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT))
    again = apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT))
    assert again.versions == [] and again.applied == []
    assert VersionStore(queue.store).versions() == [1]


def test_published_version_reproduces_the_edit(setup):
    queue, model, editor = setup
    items = correction_dicts(2)
    queue.submit(items)
    apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT))
    versions = VersionStore(queue.store)
    edit = versions.load_edit(versions.active(1))
    prompts = [i["prompt"] for i in items]
    targets = [i["target"] for i in items]
    direct = editor.edit(model, prompts, targets, [i["id"] for i in items])
    with direct.applied():
        expected = _logits(model, prompts, targets)
    with edit.applied(model):
        assert torch.allclose(_logits(model, prompts, targets), expected, atol=1e-5)


def test_policy_rejections_are_recorded_with_reasons(setup):
    queue, model, editor = setup
    queue.submit(correction_dicts(2))
    strict = ApplyConfig(policy=AcceptancePolicy(min_generalization=1.0, min_edit_success=1.0))
    editor.edit_lrs.data.fill_(0.0)  # an editor that changes nothing cannot pass
    report = apply_pending(queue, model, editor, strict)
    assert report.versions == [] and len(report.rejected) == 2
    record = queue.read("rejected", report.rejected[0][0])
    assert "edit success" in record["reason"] or "teacher forcing" in record["reason"]
    assert "metrics" in record


def test_regression_gate_rejects_a_batch_that_breaks_probes(setup):
    queue, model, editor = setup
    queue.submit(correction_dicts(2))
    editor.edit_lrs.data.fill_(50.0)  # absurdly strong edits disturb everything
    gate = AcceptancePolicy(min_edit_success=0.0, require_exact=False, min_locality=0.0, min_regression=1.0)
    report = apply_pending(queue, model, editor, ApplyConfig(policy=gate))
    assert report.versions == []
    assert all("regression probes" in reason for _, reason in report.rejected)


def test_newer_correction_of_the_same_prompt_supersedes_the_older(setup):
    queue, model, editor = setup
    first = correction_dicts(1)[0]
    queue.submit([first])
    apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT))
    newer = {**first, "id": "newer", "target": "Paris" if first["target"] != "Paris" else "Rome"}
    assert queue.submit([newer]).accepted == ["newer"]
    apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT))
    manifest = VersionStore(queue.store).manifest(2)
    assert manifest["active_ids"] == ["newer"] and manifest["superseded"] == [first["id"]]


def test_rollback_of_one_correction_leaves_the_others_answers(setup):
    queue, model, editor = setup
    items = correction_dicts(4)
    queue.submit(items)
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT))
    versions = VersionStore(queue.store)
    before = versions.load_edit(versions.active(versions.latest()))
    others = [i for i in items if i["id"] != items[0]["id"]]
    prompts, targets = [i["prompt"] for i in others], [i["target"] for i in others]
    with before.applied(model):
        answers_before = model.generate(prompts, max_new_tokens=3)
        logits_before = _logits(model, prompts, targets)
    new_version = rollback(queue, correction_ids=[items[0]["id"]], reason="wrong fact", requested_by="tester")
    after = versions.load_edit(versions.active(new_version))
    assert items[0]["id"] not in versions.manifest(new_version)["active_ids"]
    with after.applied(model):
        assert model.generate(prompts, max_new_tokens=3) == answers_before
        # Only the removed correction's own delta is gone: the rest is unchanged to
        # within its (small) effect on unrelated prompts.
        assert (_logits(model, prompts, targets) - logits_before).abs().max() < 0.5
    restored = rollback(queue, to_version=new_version - 1)
    assert sorted(versions.manifest(restored)["active_ids"]) == sorted(i["id"] for i in items)
    with pytest.raises(ValueError, match="not active"):
        rollback(queue, correction_ids=["no-such-id"])


@pytest.mark.parametrize("preconditioning", ["none", "covariance"])
def test_least_squares_versions_are_one_solve_over_all_active_corrections(tmp_path, preconditioning):
    from mend import Editor, EditorConfig
    from tests.support.synthetic import synthetic_records

    model, _ = tiny_editing_setup()
    torch.manual_seed(0)
    config = EditorConfig(
        rank=16, edit_lr_init=5e-2, aggregation="least_squares", key_preconditioning=preconditioning
    )
    editor = Editor.for_model(model, config)
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    if preconditioning == "covariance":
        editor.fit_key_covariance(model, [r.prompt for r in records])
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    items = correction_dicts(4)
    queue.submit(items)
    report = apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT))
    assert report.versions == [1, 2]
    versions = VersionStore(queue.store)
    full = versions.load_edit(versions.active(2))
    assert full.aggregation == "least_squares" and len(full.requests) == 4
    assert versions.manifest(2)["aggregation"] == "least_squares"
    name = model.targets[0].module_name
    rolled = rollback(queue, correction_ids=[items[0]["id"]])
    after = versions.load_edit(versions.active(rolled))
    keep = [i for i, r in enumerate(full.requests) if r.request_id != items[0]["id"]]
    assert torch.allclose(after.dense()[name], full.select(keep).dense()[name], atol=1e-6)
    # The editor's key penalties are stored once, whatever the number of batches.
    penalties = queue.store.list(f"{versions.root}/penalties/")
    assert len(penalties) == (1 if preconditioning == "covariance" else 0)
    versions.verify(rolled)


def _least_squares_editor(model):
    from mend import Editor, EditorConfig
    from tests.support.synthetic import synthetic_records

    torch.manual_seed(0)
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2, aggregation="least_squares"))
    records = synthetic_records(8, seed=99)
    editor.fit_normalization(model, [r.prompt for r in records], [r.target for r in records])
    return editor


def test_regulariser_scale_is_the_runs_recorded_and_leaves_the_editor_alone(tmp_path):
    model, summed_editor = tiny_editing_setup()
    editor = _least_squares_editor(model)
    trained = editor.log_lambdas.detach().clone()
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    queue.submit(correction_dicts(4))
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, max_batches=1, policy=LENIENT))
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT, regulariser_scale=4.0))
    assert torch.equal(editor.log_lambdas, trained)
    versions = VersionStore(queue.store)
    assert [versions.manifest(v)["regulariser_scale"] for v in (1, 2)] == [1.0, 4.0]
    name = model.targets[0].module_name
    first = versions.load_edit(versions.active(1))
    both = versions.load_edit(versions.active(2))
    assert float(first.change.shifts[name].lam) == pytest.approx(float(trained[0].exp()))
    # Version 2 is one solve over all four corrections, under the newest run's regulariser.
    assert len(both.change.shifts[name].keys) > len(first.change.shifts[name].keys)
    assert float(both.change.shifts[name].lam) == pytest.approx(4 * float(trained[0].exp()))
    # A rollback re-solves under the newest remaining batch's regulariser and says so.
    newest_ids = versions.manifest(2)["added"]
    assert versions.manifest(rollback(queue, correction_ids=newest_ids[:1]))["regulariser_scale"] == 4.0
    assert versions.manifest(rollback(queue, correction_ids=newest_ids[1:]))["regulariser_scale"] == 1.0
    # A summed editor has no regulariser: refused before the queue is touched.
    queue.submit(correction_dicts(6)[4:])
    with pytest.raises(ValueError, match="least-squares"):
        apply_pending(queue, model, summed_editor, ApplyConfig(policy=LENIENT, regulariser_scale=2.0))
    assert len(queue.pending()) == 2


def test_further_passes_are_recorded_and_kept_with_their_corrections(tmp_path):
    model, _ = tiny_editing_setup()
    editor = _least_squares_editor(model)
    name = model.targets[0].module_name
    rows = {}
    for passes in (1, 2):
        queue = CorrectionQueue(open_store(tmp_path / f"store{passes}"))
        items = correction_dicts(4)
        queue.submit(items)
        apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT, passes=passes))
        versions = VersionStore(queue.store)
        assert versions.manifest(2)["passes"] == passes
        full = versions.load_edit(versions.active(2))
        rows[passes] = len(full.change.shifts[name].keys)
        # Rolling a correction back takes out the rows of every pass it was captured in.
        rolled = rollback(queue, correction_ids=[items[0]["id"]])
        left = versions.load_edit(versions.active(rolled))
        assert [r.request_id for r in left.requests] == [i["id"] for i in items[1:]]
        assert len(left.change.shifts[name].keys) == rows[passes] - int((full.change.shifts[name].example == 0).sum())
        assert torch.allclose(left.dense()[name], full.select([1, 2, 3]).dense()[name], atol=1e-6)
    assert rows[2] == 2 * rows[1]


def test_further_passes_see_the_batch_re_solved_with_the_active_corrections(tmp_path, monkeypatch):
    from mend import Editor
    from mend.deltas import DeltaHooks

    model, _ = tiny_editing_setup()
    editor = _least_squares_editor(model)
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    queue.submit(correction_dicts(4))
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, max_batches=1, policy=LENIENT))
    hooked_per_pass = []
    capture_once = Editor._edit_once

    def spy(self, model, *args):
        hooked_per_pass.append(DeltaHooks.of(model.model).keys())
        return capture_once(self, model, *args)

    monkeypatch.setattr(Editor, "_edit_once", spy)
    apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT, passes=2))
    # Pass one sees the published version; pass two one edit again: the new batch re-solved
    # with the active corrections (what would be published), not stacked on top of them.
    first, second = hooked_per_pass
    assert len(first) == 1 and len(second) == 1 and first != second
    assert DeltaHooks.of(model.model).keys() == []


def test_a_run_adds_each_batch_to_the_active_normal_equations_and_publishes_the_full_solve(tmp_path, monkeypatch):
    model, _ = tiny_editing_setup()
    editor = _least_squares_editor(model)
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    items = correction_dicts(20)
    queue.submit(items[:16])
    published = {}
    publish = VersionStore.publish

    def spy(self, parent, new_delta, active, details, full_edit=None):
        published[(parent or 0) + 1] = full_edit
        return publish(self, parent, new_delta, active, details, full_edit=full_edit)

    monkeypatch.setattr(VersionStore, "publish", spy)
    report = apply_pending(queue, model, editor, ApplyConfig(batch_size=4, policy=LENIENT))
    assert report.versions == [1, 2, 3, 4]
    versions = VersionStore(queue.store)
    final = published[4]
    from_rows = versions.load_edit(versions.active(4))
    dense_solved = 0
    for name, ks in final.change.shifts.items():
        # Past the matrix's narrower side the run solved from summed normal equations ...
        if ks.normal is not None:
            dense_solved += 1
            assert len(ks.keys) > min(ks.keys.shape[1], ks.shifts.shape[1])
        # ... and published what a solve over every stored row gives.
        assert torch.allclose(final.dense()[name], from_rows.dense()[name], atol=1e-5)
    assert dense_solved > 0
    # A newer fix of an active correction's prompt replaces its rows; later batches of
    # the same run build on the active set without them.
    newer = {**items[0], "id": "newer", "target": items[1]["target"]}
    queue.submit([newer, *items[16:]])
    report = apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT))
    assert report.versions == [5, 6, 7]
    assert versions.manifest(5)["superseded"] == [items[0]["id"]]
    final, from_rows = published[7], versions.load_edit(versions.active(7))
    assert items[0]["id"] not in {r.request_id for r in final.requests}
    assert [r.request_id for r in final.requests] == [r.request_id for r in from_rows.requests]
    for name in final.change.shifts:
        assert torch.allclose(final.dense()[name], from_rows.dense()[name], atol=1e-5)


def test_older_versions_adapters_are_pruned_and_rebuilt_on_demand(tmp_path):
    from safetensors.torch import load_file

    model, editor = tiny_editing_setup()
    stores = {}
    for keep in (None, 2):
        queue = CorrectionQueue(open_store(tmp_path / f"store-{keep}"))
        queue.submit(correction_dicts(8))
        apply_pending(queue, model, editor, ApplyConfig(batch_size=2, policy=LENIENT, keep_adapters=keep))
        stores[keep] = VersionStore(queue.store)
    everything, pruned = stores[None], stores[2]
    assert pruned.versions() == everything.versions() == [1, 2, 3, 4]
    assert [v for v in pruned.versions() if pruned.adapter(v)] == [3, 4]
    assert all(everything.adapter(v) for v in everything.versions())
    assert pruned.store.list(pruned.manifest(1)["adapter"] + "/") == []
    for version in pruned.versions():  # a pruned adapter is gone on purpose, not corrupt
        pruned.verify(version)
    assert pruned.prune_adapters(2) == [] and pruned.prune_adapters(1) == [3]
    # What is rebuilt from the deltas is what was published.
    everything.store.download_dir(everything.adapter(2), tmp_path / "published")
    pruned.export_adapter(2, tmp_path / "rebuilt")
    published = load_file(tmp_path / "published" / "adapter_model.safetensors")
    rebuilt = load_file(tmp_path / "rebuilt" / "adapter_model.safetensors")
    assert published.keys() == rebuilt.keys()
    assert all(torch.allclose(published[k], rebuilt[k], atol=1e-6) for k in published)
    with pytest.raises(ValueError, match="keep at least"):
        pruned.prune_adapters(0)


def _scoped_setup(tmp_path):
    from mend.scope import ScopeConfig, ScopeModel

    model, editor = tiny_editing_setup()
    torch.manual_seed(0)
    # Block 0 of the tiny LLaMA (it edits blocks 1-3); a threshold only a correction's own
    # prompt reaches, so any other input must stay exactly on the base model.
    editor.scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999), model.model.config.hidden_size)
    return CorrectionQueue(open_store(tmp_path / "store")), model, editor


def test_scoped_corrections_are_published_routed_and_roll_back_exactly(tmp_path):
    from mend.aggregations import ScopedChange

    queue, model, editor = _scoped_setup(tmp_path)
    items = correction_dicts(5)
    queue.submit(items)
    unrelated = (["Water boils at 100 degrees"], ["Celsius"])
    base = _logits(model, *unrelated)
    report = apply_pending(queue, model, editor, ApplyConfig(batch_size=3, policy=LENIENT, aggregation="scoped"))
    assert report.versions == [1, 2] and len(report.applied) == 5
    versions = VersionStore(queue.store)
    assert versions.manifest(2)["aggregation"] == "scoped"
    full = versions.load_edit(versions.active(2))
    assert isinstance(full.change, ScopedChange) and full.change.n_requests == 5 and len(full.change.keys) == 5
    with full.applied(model):
        assert torch.equal(_logits(model, *unrelated), base)  # out of every scope: the base model
        own = _logits(model, [items[0]["prompt"]], [items[0]["target"]])
    with full.select([0]).applied(model):
        assert torch.allclose(_logits(model, [items[0]["prompt"]], [items[0]["target"]]), own, atol=1e-5)
    # Rolling one back removes exactly its key and rows; the others keep theirs.
    dropped = items[1]["id"]
    version = rollback(queue, correction_ids=[dropped], reason="test")
    after = versions.load_edit(versions.active(version))
    assert dropped not in [r.request_id for r in after.requests] and len(after.change.keys) == 4
    kept = [i for i, r in enumerate(full.requests) if r.request_id != dropped]
    assert torch.equal(after.change.keys, full.change.keys[kept])
    # For multi-LoRA servers: one adapter per active correction and the router picking them.
    from mend.export.routed_peft import AdapterRouter

    versions.export_adapter(version, tmp_path / "routed", routed=True)
    router = AdapterRouter.load(tmp_path / "routed")
    assert len(router.adapters) == 4 and len(list((tmp_path / "routed" / "adapters").iterdir())) == 4
    picked = router.pick(model, [items[0]["prompt"], unrelated[0][0]])
    assert picked[0] == [router.adapters[[r.request_id for r in after.requests].index(items[0]["id"])]]
    assert picked[1] == []


def test_a_scoped_run_needs_an_editor_with_a_scope_model(tmp_path):
    queue = CorrectionQueue(open_store(tmp_path / "store"))
    model, editor = tiny_editing_setup()
    queue.submit(correction_dicts(2))
    with pytest.raises(ValueError, match="needs a scope model"):
        apply_pending(queue, model, editor, ApplyConfig(policy=LENIENT, aggregation="scoped"))
    assert queue.counts()["pending"] == 2  # nothing lost


def _question(cid: str, prompt: str, target: str, subject: str, minute: int) -> dict:
    return {"id": cid, "prompt": prompt, "target": target, "subject": subject, "requested_by": "tester",
            "requested_at": f"2026-01-01T00:{minute:02d}:00+00:00"}


def test_a_scoped_correction_of_the_same_question_supersedes_the_active_one_and_contradicts_one_in_its_batch(tmp_path):
    from mend.scope.scores import best_token_scores
    from mend.scope.supersede import Questions

    queue, model, editor = _scoped_setup(tmp_path)
    designed, architect = "Who designed Toodyay Fire Station?", "Who was the architect of Toodyay Fire Station?"
    subject = "Toodyay Fire Station"
    # A threshold each of the two phrasings just reaches for the other's key.
    one, other = (Questions.of(editor.scope, model, [p], [subject]) for p in (designed, architect))
    scores = [best_token_scores(editor.scope, a.keys, b.prompts)[0, 0].item() for a, b in ((one, other), (other, one))]
    editor.scope = editor.scope.with_threshold(min(scores) - 1e-4)
    config = ApplyConfig(batch_size=2, policy=LENIENT, aggregation="scoped")
    queue.submit([_question("old", designed, "Ken Duncan", subject, 0)])
    apply_pending(queue, model, editor, config)
    queue.submit([_question("new", architect, "Wyndham Lewis", subject, 1),
                  _question("same-batch", designed, "Kohn Pedersen Fox", subject, 2)])
    report = apply_pending(queue, model, editor, config)
    assert report.applied == ["new"]
    assert [cid for cid, _ in report.dead_lettered] == ["same-batch"]
    assert "same question" in report.dead_lettered[0][1]
    manifest = VersionStore(queue.store).manifest(2)
    assert manifest["active_ids"] == ["new"] and manifest["superseded"] == ["old"]


def test_scoped_corrections_of_the_same_question_with_the_same_target_agree_and_stay_live(tmp_path):
    queue, model, editor = _scoped_setup(tmp_path)
    designed, architect = "Who designed Toodyay Fire Station?", "Who was the architect of Toodyay Fire Station?"
    subject = "Toodyay Fire Station"
    editor.scope = editor.scope.with_threshold(-0.999)  # every question about the subject is the same one
    # (and every correction is switched on for every prompt: what one undoes is not asked here)
    config = ApplyConfig(batch_size=3, policy=LENIENT.model_copy(update={"protect_active": False}),
                         aggregation="scoped")
    queue.submit([_question("old", designed, "Ken Duncan", subject, 0)])
    apply_pending(queue, model, editor, config)
    queue.submit([_question("agrees", architect, " ken  duncan", subject, 1),
                  _question("agrees-too", "Who drew up Toodyay Fire Station?", "Ken Duncan", subject, 2),
                  _question("differs", "Whose design is Toodyay Fire Station?", "Wyndham Lewis", subject, 3)])
    report = apply_pending(queue, model, editor, config)
    assert report.applied == ["agrees", "agrees-too"]
    assert [cid for cid, _ in report.dead_lettered] == ["differs"]
    assert "'agrees' in the same batch (same question, target 'ken  duncan' vs 'Wyndham Lewis')" in report.dead_lettered[0][1]
    manifest = VersionStore(queue.store).manifest(2)
    assert manifest["active_ids"] == ["old", "agrees", "agrees-too"] and manifest["superseded"] == []


def test_a_scoped_run_records_strengths_and_predicts_only_the_locality_probes_it_can_change(tmp_path, monkeypatch):
    from mend.corrections import apply as apply_module
    from mend.corrections import policy
    from mend.scope.landing import DEFAULT_STRENGTHS

    items = correction_dicts(4)
    # The first correction's second probe is another correction's own prompt: the batch
    # changes what it predicts. Its first probe (shared by all) is out of every scope.
    items[0]["locality"].append({"prompt": items[1]["prompt"], "answer": items[1]["target"]})
    predicted: list[str] = []
    real = policy.answer_predictions

    def spy(model, prompts, answers, chunk=None):
        predicted.extend(prompts)
        return real(model, prompts, answers, chunk)

    monkeypatch.setattr(policy, "answer_predictions", spy)
    runs = {}
    for every_probe in (False, True):
        if every_probe:  # the reference: every probe predicted before and after
            monkeypatch.setattr(apply_module.ApplyRun, "_changeable_probes", lambda self, *args: None)
        queue, model, editor = _scoped_setup(tmp_path / str(every_probe))
        queue.submit([dict(item) for item in items])
        predicted.clear()
        apply_pending(queue, model, editor, ApplyConfig(batch_size=4, policy=LENIENT, aggregation="scoped"))
        runs[every_probe] = (VersionStore(queue.store).manifest(1)["corrections"], list(predicted))
    (fast, fast_predicted), (full, full_predicted) = runs[False], runs[True]
    unrelated = items[0]["locality"][0]["prompt"]
    assert unrelated in full_predicted and unrelated not in fast_predicted
    assert fast_predicted.count(items[1]["prompt"]) == 2  # before and after
    for cid, entry in full.items():
        assert fast[cid]["metrics"]["locality"] == entry["metrics"]["locality"]
        assert fast[cid]["metrics"]["strength"] in DEFAULT_STRENGTHS


def test_scoped_corrections_landing_at_no_strength_are_refined_until_they_land(tmp_path):
    from mend.evaluation.scoring import score_targets

    exact_only = AcceptancePolicy(min_edit_success=0.0, require_exact=True, min_locality=0.0, min_regression=0.0)
    items = correction_dicts(3)
    published = {}
    for steps in (0, 60):
        queue, model, editor = _scoped_setup(tmp_path / str(steps))
        with torch.no_grad():
            editor.edit_lrs.mul_(0.005)  # edits too weak to land at any strength
        queue.submit([dict(item) for item in items])
        config = ApplyConfig(batch_size=3, policy=exact_only, aggregation="scoped", refine_steps=steps)
        published[steps] = apply_pending(queue, model, editor, config)
    # Without refining they are refused as computed.
    assert published[0].applied == [] and len(published[0].rejected) == 3
    assert sorted(published[60].applied) == sorted(item["id"] for item in items)
    versions = VersionStore(queue.store)
    for entry in versions.manifest(1)["corrections"].values():
        assert entry["metrics"]["refine_steps"] >= 1 and entry["metrics"]["edit_exact"]
    with versions.load_edit(versions.active(1)).applied(model):
        assert all(score_targets(model, [i["prompt"] for i in items], [i["target"] for i in items]).exact)


@pytest.mark.parametrize(("protect", "refine_steps"), [(False, 0), (True, 0), (True, 60)])
def test_a_scoped_correction_that_undoes_an_active_one_it_is_switched_on_with_is_refined_or_refused(
        tmp_path, protect, refine_steps):
    from mend.evaluation.scoring import score_targets

    queue, model, editor = _scoped_setup(tmp_path)
    # Learned scores switch nothing on; the subject test switches a correction on for any
    # prompt naming its subject: the newer correction (about "Toodyay") is switched on at
    # the older one's prompt, which names it, without asking the same question.
    editor.scope = editor.scope.with_threshold(0.999, -0.99)
    policy = LENIENT.model_copy(update={"protect_active": protect})
    config = ApplyConfig(batch_size=1, policy=policy, aggregation="scoped", refine_steps=refine_steps)
    old = _question("old", "Who designed Toodyay Fire Station?", "Paris", "Toodyay Fire Station", 0)
    queue.submit([old])
    apply_pending(queue, model, editor, config)
    versions = VersionStore(queue.store)

    def old_holds() -> bool:
        with versions.load_edit(versions.active(versions.latest())).applied(model):
            return score_targets(model, [old["prompt"]], [old["target"]]).exact[0]

    assert old_holds()
    queue.submit([_question("new", "Where is Toodyay?", "Rome", "Toodyay", 1)])
    report = apply_pending(queue, model, editor, config)
    if protect and refine_steps:
        # Its values refined with the older correction's prompt and target kept alongside:
        # published, and both hold.
        assert report.applied == ["new"] and report.rejected == []
        metrics = versions.manifest(versions.latest())["corrections"]["new"]["metrics"]
        assert metrics["spare_steps"] >= 1 and metrics["edit_exact"] and "undoes" not in metrics
        assert old_holds()
    elif protect:
        assert report.applied == [] and report.rejected == [
            ("new", "undoes active correction 'old' (its prompt no longer gets its target)")]
        assert queue.read("rejected", "new")["metrics"]["undoes"] == ["old"]
        assert old_holds()
    else:  # without the check the newer correction is published and the older one no longer holds
        assert report.applied == ["new"] and not old_holds()
