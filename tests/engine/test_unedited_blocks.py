"""Forwards of inputs seen before reuse the unedited blocks (mend.models.unedited_blocks)."""

from __future__ import annotations

import pytest
import torch

from mend import Editor, EditorConfig
from mend.models.blocks import decoder_blocks
from mend.models.tasks import split_prompt_target
from mend.models.unedited_blocks import reusing_unedited_blocks
from mend.scope import ScopeConfig, ScopeModel
from tests.support.tiny_models import tiny_model

PROMPTS = ["The capital of France is", "Who wrote Hamlet?", "The Eiffel Tower is in", "Water boils at"]
TARGETS = ["Rome", "Jean Darrieux", "Berlin", "a hundred degrees"]


def _logits(model, prompts, targets) -> list[torch.Tensor]:
    """Per sequence, the logits at its real positions (padding cut off)."""
    batch = model.task.batch(prompts, targets)
    with torch.no_grad():
        logits = model.model(**batch.inputs, use_cache=False).logits
    return [row[mask.bool()] for row, mask in zip(logits, batch.inputs["attention_mask"], strict=True)]


def _close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


def _first_edited(model) -> int:
    blocks = decoder_blocks(model.model)
    prefix = next(name for name, module in model.model.named_modules() if module is blocks)
    return min(int(t.module_name[len(prefix) + 1 :].split(".")[0]) for t in model.targets)


def _count_block_forwards(monkeypatch, model) -> list[int]:
    """Calls of the decoder blocks' own forward (replayed blocks do not call it)."""
    calls: list[int] = []
    cls = type(decoder_blocks(model.model)[0])
    original = cls.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counted)
    return calls


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_sequence_seen_before_runs_only_the_edited_blocks(family, monkeypatch):
    model = tiny_model(family)
    n_blocks, first = len(decoder_blocks(model.model)), _first_edited(model)
    assert first > 0
    plain = _logits(model, PROMPTS, TARGETS)
    calls = _count_block_forwards(monkeypatch, model)
    with reusing_unedited_blocks(model):
        _logits(model, PROMPTS, TARGETS)
        assert len(calls) == n_blocks
        # the same sequences in another batch: other order, other padded width
        again = _logits(model, PROMPTS[2:0:-1], TARGETS[2:0:-1])
        assert len(calls) == 2 * n_blocks - first
        _logits(model, ["A sentence never scored"], ["before"])
        assert len(calls) == 3 * n_blocks - first
    assert _close(again, [plain[2], plain[1]])


def test_an_in_place_change_below_the_edited_blocks_discards_what_was_kept():
    model = tiny_model("llama")
    with reusing_unedited_blocks(model):
        first = _logits(model, PROMPTS, TARGETS)
        with torch.no_grad():
            for p in decoder_blocks(model.model)[0].parameters():
                p.add_(0.5)
        changed = _logits(model, PROMPTS, TARGETS)
    assert not _close(changed, first, atol=1e-3)
    assert _close(changed, _logits(model, PROMPTS, TARGETS))


def test_reuse_changes_no_output_of_an_edited_model():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    edit = editor.edit(model, PROMPTS[:2], TARGETS[:2], ["a", "b"])
    plain_base = _logits(model, PROMPTS, TARGETS)
    with edit.applied(model):
        plain_edited = _logits(model, PROMPTS, TARGETS)
    with reusing_unedited_blocks(model):
        base = _logits(model, PROMPTS, TARGETS)
        with edit.applied(model):
            edited = _logits(model, PROMPTS[::-1], TARGETS[::-1])[::-1]
        prompt = model.tokenizer(PROMPTS[:1], return_tensors="pt")
        model.model(**prompt, use_cache=False)  # seen before: generation must still fill its cache
        generated = model.model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert _close(base, plain_base)
    assert not _close(plain_edited, plain_base, atol=1e-4)
    assert _close(edited, plain_edited)
    plain_generated = model.model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert torch.equal(generated, plain_generated)


def _score_twice_hooked(model, module, hook) -> None:
    """Score the same batch twice under reuse, with ``hook`` on ``module``."""
    handle = module.register_forward_hook(hook)
    try:
        with reusing_unedited_blocks(model):
            _logits(model, PROMPTS, TARGETS)
            _logits(model, PROMPTS, TARGETS)
    finally:
        handle.remove()


def test_a_hooked_unedited_block_sees_its_own_states_on_replay(monkeypatch):
    model = tiny_model("llama")
    seen: list[torch.Tensor] = []
    calls = _count_block_forwards(monkeypatch, model)
    _score_twice_hooked(model, decoder_blocks(model.model)[0], lambda m, a, out: seen.append(out.detach().clone()))
    real = model.task.batch(PROMPTS, TARGETS).inputs["attention_mask"].bool()
    assert len(seen) == 2 and torch.equal(seen[0][real], seen[1][real])
    assert len(calls) < 2 * len(decoder_blocks(model.model))  # the second forward was replayed


def test_hooks_inside_an_unedited_block_turn_reuse_off():
    model = tiny_model("llama")
    calls = []
    block = decoder_blocks(model.model)[0]
    _score_twice_hooked(model, block.mlp, lambda m, a, out: calls.append(1))
    assert len(calls) == 2
    assert "forward" not in block.__dict__  # the patch is gone after the block


def test_a_model_without_decoder_blocks_runs_as_usual():
    model = tiny_model("t5")
    batch = model.task.batch(PROMPTS, TARGETS)
    with torch.no_grad():
        plain = model.task.logits(model.model, batch)
        with reusing_unedited_blocks(model):
            assert torch.equal(model.task.logits(model.model, batch), plain)


def test_routing_on_replayed_states_switches_on_the_same_corrections():
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=16, edit_lr_init=5e-2))
    editor.fit_normalization(model, PROMPTS, TARGETS)
    torch.manual_seed(0)
    editor.scope = ScopeModel(ScopeConfig(layer=0, dim=16, threshold=0.999), model.model.config.hidden_size)
    edit = editor.edit(model, PROMPTS[:2], TARGETS[:2], ["a", "b"], aggregation="scoped",
                       subjects=["France", "Hamlet"])
    with edit.applied(model):
        plain = _logits(model, PROMPTS, TARGETS)
        with reusing_unedited_blocks(model):
            _logits(model, PROMPTS, TARGETS)
            replayed = _logits(model, PROMPTS, TARGETS)
    assert _close(replayed, plain)


def test_a_block_kept_before_it_is_hooked_serves_the_hooked_forwards(monkeypatch):
    model = tiny_model("llama")
    calls = _count_block_forwards(monkeypatch, model)
    n_blocks, first = len(decoder_blocks(model.model)), _first_edited(model)
    seen: list[torch.Tensor] = []
    with reusing_unedited_blocks(model, keep=(0,)):
        _logits(model, PROMPTS, TARGETS)  # as the capture pass, before routing is hooked in
        handle = decoder_blocks(model.model)[0].register_forward_hook(lambda m, a, out: seen.append(out))
        try:
            _logits(model, PROMPTS, TARGETS)
        finally:
            handle.remove()
    assert len(calls) == 2 * n_blocks - first and len(seen) == 1


def test_a_forward_stopped_at_a_hooked_block_serves_the_blocks_up_to_it(monkeypatch):
    model = tiny_model("llama").retargeted(["model.layers.3.mlp.down_proj"])
    n_blocks, first = len(decoder_blocks(model.model)), _first_edited(model)
    assert first == 3
    plain = _logits(model, PROMPTS, TARGETS)
    calls = _count_block_forwards(monkeypatch, model)

    class Stop(Exception):
        pass

    def stop(module, args, out):
        raise Stop

    with reusing_unedited_blocks(model):
        handle = decoder_blocks(model.model)[0].register_forward_hook(stop)
        with pytest.raises(Stop):
            _logits(model, PROMPTS, TARGETS)  # as the routing check: block 0 only, kept as it is hooked
        handle.remove()
        handle = decoder_blocks(model.model)[0].register_forward_hook(lambda m, a, out: None)
        try:
            again = _logits(model, PROMPTS, TARGETS)  # block 0 replayed, the rest computed from it
        finally:
            handle.remove()
    assert len(calls) == 1 + (n_blocks - 1)
    assert _close(again, plain)


def test_the_beginning_of_a_sequence_seen_before_replays_from_it(monkeypatch):
    model = tiny_model("llama")
    n_blocks, first = len(decoder_blocks(model.model)), _first_edited(model)
    prompts = [split_prompt_target(model.tokenizer, p, t)[0] for p, t in zip(PROMPTS, TARGETS, strict=True)]

    def prompt_logits() -> list[torch.Tensor]:  # the prompts alone, right-padded
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
        with torch.no_grad():
            logits = model.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return [row[: len(p)] for row, p in zip(logits, prompts, strict=True)]

    plain = prompt_logits()
    calls = _count_block_forwards(monkeypatch, model)
    with reusing_unedited_blocks(model):
        _logits(model, PROMPTS, TARGETS)  # prompt + target, as the capture pass runs them
        again = prompt_logits()  # the prompts alone, as scope keys are read
        assert len(calls) == 2 * n_blocks - first
        prompt_logits()  # kept for themselves now, beside their longer sequences
        assert len(calls) == 3 * n_blocks - 2 * first
    assert _close(again, plain)
