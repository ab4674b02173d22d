"""A scoped edit exported for multi-LoRA servers: per-correction adapters plus a router
that picks, per request, exactly what the scoped forward pass switches on."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from mend import Editor, EditorConfig
from mend.export.routed_peft import AdapterRouter, save_routed_adapters
from mend.scope import RoutedChanges, ScopeConfig, ScopeModel
from mend.scope.model import RelationKey
from tests.support.tiny_models import tiny_model

PROMPTS = ["The capital of France is", "Who wrote Hamlet?"]
TARGETS = ["Rome", "Jean Darrieux"]
UNRELATED = "Water boils at 100 degrees"


def _logits(model, hf_model, prompts, targets):
    with torch.no_grad():
        return model.task.logits(hf_model, model.task.batch(prompts, targets))


def _scoped_edit(model, scope=None):
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    torch.manual_seed(0)
    editor.scope = scope or ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999), model.model.config.hidden_size)
    return editor.edit(model, PROMPTS, TARGETS, ["fix/a", "b"], aggregation="scoped", subjects=["France", "Hamlet"])


def test_each_request_gets_the_adapter_the_forward_pass_would_route_it_to(tmp_path):
    model = tiny_model("llama")
    edit = _scoped_edit(model)
    save_routed_adapters(edit, tmp_path / "routed")
    router = AdapterRouter.load(tmp_path / "routed")
    picked = router.pick(model, [*PROMPTS, UNRELATED])
    assert picked == [["c00000-fix_a"], ["c00001-b"], []]
    with edit.applied(model):
        routed = _logits(model, model.model, [*PROMPTS, UNRELATED], [*TARGETS, "hot"])
        decided = RoutedChanges.of(model.model).last
    assert [[router.adapters[i] for i in a.tolist()] for a in decided.active] == picked
    for i, names in enumerate(picked[:2]):
        served = PeftModel.from_pretrained(tiny_model("llama").model, tmp_path / "routed" / "adapters" / names[0])
        got = _logits(model, served, [PROMPTS[i]], [TARGETS[i]])[0]
        assert torch.allclose(got, routed[i, : got.shape[0]], atol=1e-5)
    meta = json.loads((tmp_path / "routed" / "router" / "index.json").read_text())
    assert meta["request_ids"] == ["fix/a", "b"]
    assert (tmp_path / "routed" / "merged" / "adapter_model.safetensors").exists()


def test_only_routed_edits_export_this_way_and_a_tampered_index_is_refused(tmp_path):
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    with pytest.raises(ValueError, match="not routed"):
        save_routed_adapters(editor.edit(model, PROMPTS, TARGETS), tmp_path / "summed")
    save_routed_adapters(_scoped_edit(model), tmp_path / "routed")
    index = tmp_path / "routed" / "router" / "index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "scope_fingerprint": "0" * 16}))
    with pytest.raises(ValueError, match="does not match"):
        AdapterRouter.load(tmp_path / "routed")


@pytest.mark.parametrize("relation_threshold", [-0.999, 0.999])
def test_the_router_applies_the_subject_and_relation_tests_as_the_forward_pass_does(tmp_path, relation_threshold):
    model = tiny_model("llama")
    d = model.model.config.hidden_size
    torch.manual_seed(0)
    scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999, subject_threshold=-0.99), d)
    edit = _scoped_edit(model, scope.with_relation(RelationKey(d, 16), relation_threshold))
    save_routed_adapters(edit, tmp_path / "routed")
    router = AdapterRouter.load(tmp_path / "routed")
    prompts = [*PROMPTS, "Which language does France speak?", UNRELATED]
    picked = router.pick(model, prompts)
    with edit.applied(model):
        _logits(model, model.model, prompts, [*TARGETS, "French", "hot"])
        decided = RoutedChanges.of(model.model).last
    assert [[router.adapters[i] for i in a.tolist()] for a in decided.active] == picked
    # Another question naming France switches its correction on only if it passes the relation test.
    assert picked[2] == (["c00000-fix_a"] if relation_threshold < 0 else [])

