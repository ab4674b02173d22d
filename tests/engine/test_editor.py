"""Editor networks: identity init, normalisation statistics, save/load, compatibility."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from mend import EditableModel, Editor, EditorConfig, IncompatibleModelError
from mend.capture import capture_factors
from mend.editor.network import FactorEditor, RunningNorm
from tests.support.tiny_models import REQUESTS, tiny_model, tiny_tokenizer


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    seed=st.integers(0, 1000),
)
def test_batched_running_norm_matches_numpy(sizes, seed):
    rng = np.random.default_rng(seed)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in sizes]
    norm = RunningNorm(4)
    for chunk in chunks:
        norm.update(torch.from_numpy(chunk))
    data = np.concatenate(chunks)
    assert norm.count.item() == len(data)
    assert np.allclose(norm.mean.numpy(), data.mean(0))
    if len(data) >= 2:
        assert np.allclose(norm.std().numpy(), data.std(0, ddof=1))


def test_empty_statistics_are_a_clear_error():
    net = FactorEditor(4, 6, n_modes=1, rank=8, n_blocks=2)
    with pytest.raises(RuntimeError, match="normalisation statistics are empty"):
        net(torch.randn(2, 4), torch.randn(2, 6), torch.zeros(2, dtype=torch.long))


def test_untrained_editor_is_identity_on_normalised_factors():
    net = FactorEditor(4, 6, n_modes=2, rank=8, n_blocks=2)
    u, d = torch.randn(10, 4), torch.randn(10, 6)
    net.norm.update(torch.cat([u, d], -1))
    mode = torch.tensor([0, 1] * 5)
    u_t, d_t = net(u, d, mode)
    z = net.norm(torch.cat([u, d], -1))
    assert torch.allclose(u_t, z[:, :4]) and torch.allclose(d_t, z[:, 4:])


def test_identity_editor_without_norm_effect_is_gradient_descent():
    """With unit statistics, the untrained editor's change is -lr * dL/dW."""
    model = tiny_model("llama")
    editor = Editor.for_model(model, EditorConfig(rank=8, edit_lr_init=0.5))
    for net in editor.nets.values():  # mean 0, std 1: normalisation is the identity
        net.norm.count.fill_(2.0)
        net.norm.m2.fill_(1.0)
    prompts, targets = REQUESTS["causal"]
    edit = editor.edit(model, prompts, targets)
    batch = model.task.batch(prompts, targets)
    capture = capture_factors(model.model, model.task, model.targets, batch)
    for target in model.targets:
        f = capture.factors[target.module_name]
        expected = -0.5 * (f.delta.T @ f.u)
        assert torch.allclose(edit.dense()[target.module_name], expected, atol=1e-5)


def test_shapes_share_networks_with_one_mode_per_matrix():
    model = tiny_model("llama")  # gate/up: 32x64 (6 matrices), down: 64x32 (3 matrices)
    editor = Editor.for_model(model, EditorConfig(rank=8))
    assert sorted(editor.nets) == ["32x64", "64x32"]
    assert editor.nets["32x64"].blocks[0].mode_scale.shape == (6, 96)
    assert editor.nets["64x32"].blocks[0].mode_scale.shape == (3, 96)
    assert editor.edit_lrs.shape == (9,)
    unshared = Editor.for_model(model, EditorConfig(rank=8, share_by_shape=False))
    assert len(unshared.nets) == 9


def test_save_load_roundtrip_keeps_weights_and_statistics(tmp_path):
    model = tiny_model("gpt2")
    editor = Editor.for_model(model, EditorConfig(rank=8, edit_lr_init=1e-2))
    prompts, targets = REQUESTS["causal"]
    editor.fit_normalization(model, prompts, targets)
    with torch.no_grad():
        for p in editor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    edit = editor.edit(model, prompts, targets)
    editor.save(tmp_path / "ed")
    assert not list(tmp_path.glob("ed/*.pt")) and not list(tmp_path.glob("ed/*.bin"))
    meta = json.loads((tmp_path / "ed" / "editor.json").read_text())
    assert meta["base_model"]["name"] == "tiny-gpt2"
    assert meta["targets"][0] == {
        "module_name": "transformer.h.1.mlp.c_fc", "d_in": 32, "d_out": 128, "layout": "conv1d"
    }
    loaded = Editor.load(tmp_path / "ed")
    for key, value in editor.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    again = loaded.edit(model, prompts, targets)
    for name in edit.deltas:
        assert torch.allclose(edit.dense()[name], again.dense()[name], atol=1e-6)


def test_editor_refuses_a_model_of_another_architecture(tmp_path):
    editor = Editor.for_model(tiny_model("gpt2"), EditorConfig(rank=8))
    editor.save(tmp_path / "ed")
    loaded = Editor.load(tmp_path / "ed")
    with pytest.raises(IncompatibleModelError, match="missing matrix transformer.h.1.mlp.c_fc"):
        loaded.edit(tiny_model("llama"), ["The capital of France is"], ["Rome"])


def test_editor_refuses_same_architecture_with_other_weights():
    editor = Editor.for_model(tiny_model("llama", seed=0), EditorConfig(rank=8))
    other = tiny_model("llama", seed=1)
    with pytest.raises(IncompatibleModelError, match="fingerprint"):
        editor.check_model(other)
    editor.check_model(other, strict=False)  # allowed when asked


def test_editor_refuses_mismatched_shapes():
    editor = Editor.for_model(tiny_model("llama"), EditorConfig(rank=8))
    wider = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=400))
    model = EditableModel.wrap(wider, tiny_tokenizer())
    with pytest.raises(IncompatibleModelError, match=r"\(32, 48\)"):
        editor.check_model(model)


def test_key_preconditioning_shrinks_common_directions(tmp_path):
    model = tiny_model("llama")
    config = EditorConfig(rank=8, key_preconditioning="covariance", precond_damping=0.1)
    editor = Editor.for_model(model, config)
    texts = ["The capital of France is Paris.", "Who wrote Hamlet? William Shakespeare.", "Water boils at 100 degrees."]
    editor.fit_key_covariance(model, texts * 4)
    assert bool(editor.key_precond_fitted)
    precond = editor.key_precond_0
    assert torch.allclose(precond, precond.T, atol=1e-4)
    eigen = torch.linalg.eigvalsh(precond.double())
    assert eigen.min() > 0 and eigen.max() / eigen.min() > 1.5  # not the identity any more
    editor.save(tmp_path / "ed")
    assert torch.equal(Editor.load(tmp_path / "ed").key_precond_0, precond)
