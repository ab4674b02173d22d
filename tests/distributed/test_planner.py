"""The memory planner: exact counts from the real classes, the ZeRO arithmetic, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from mend.cli import app
from mend.distributed.memory_model import GIB, Parallel, Workload, plan
from mend.distributed.shapes import config_from_sizes, editor_shape, shape_of
from mend.editor.config import EditorConfig
from mend.editor.editor import Editor
from mend.models.targets import EditTarget

LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32,
                  vocab_size=32000)
LLAMA_2_70B = dict(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
                   vocab_size=32000)


@pytest.fixture(scope="module")
def llama7b():
    return shape_of(config_from_sizes("llama", **LLAMA_2_7B))


@pytest.fixture(scope="module")
def llama70b():
    return shape_of(config_from_sizes("llama", **LLAMA_2_70B))


def test_model_is_counted_exactly_without_memory(llama7b, llama70b):
    assert llama7b.n_params == 6_738_415_616  # LLaMA-2-7B
    assert llama70b.n_params == 68_976_648_192  # LLaMA-2-70B
    assert [t[0] for t in llama70b.targets][:3] == [f"model.layers.77.mlp.{m}" for m in ("gate_proj", "up_proj",
                                                                                         "down_proj")]
    assert llama70b.first_edited_layer == 77


def test_editor_size_is_mends_formula_and_the_real_editor(llama7b):
    shape = editor_shape(llama7b.targets)
    # Design doc §2: LLaMA-2-7B, D = 4096 + 11008, about 233 M parameters.
    assert shape.n_params == pytest.approx(233e6, rel=0.01)
    d, r = 4096 + 11008, 1920
    formula = sum(2 * (2 * d * r + d + 2 * modes * d) for modes in (6, 3)) + 9
    assert shape.n_params == formula
    with torch.device("meta"):
        real = Editor(EditorConfig(), [EditTarget(n, a, b, "linear") for n, a, b in llama7b.targets])
    assert sum(p.numel() for p in real.parameters()) == shape.n_params
    assert sorted(p.numel() for p in real.parameters()) == sorted(shape.param_numels)


def test_zero3_splits_the_base_model_and_offload_moves_it_to_host(llama70b):
    editor = editor_shape(llama70b.targets)
    one_node = plan(llama70b, editor, Parallel(ranks=8, zero_stage=3))
    two_nodes = plan(llama70b, editor, Parallel(ranks=16, nodes=2, zero_stage=3))
    assert one_node.device["base parameters"] == pytest.approx(2 * two_nodes.device["base parameters"], rel=1e-3)
    assert two_nodes.device["base parameters"] == pytest.approx(2 * llama70b.n_params / 16, rel=1e-3)
    zero2 = plan(llama70b, editor, Parallel(ranks=16, zero_stage=2))
    assert zero2.device["base parameters"] == 2 * llama70b.n_params  # replicated
    assert zero2.fits is None and zero2.device_total > 80 * GIB
    offloaded = plan(llama70b, editor, Parallel(ranks=16, nodes=2, zero_stage=3, offload_param=True,
                                                offload_optimizer=True), device_gb=80)
    assert offloaded.host["base partition"] == pytest.approx(2 * llama70b.n_params / 16, rel=1e-3)
    assert offloaded.device_total < two_nodes.device_total
    assert offloaded.host_per_node == pytest.approx(8 * offloaded.host_per_rank)
    assert offloaded.fits


def test_fp32_doubles_the_base_and_more_edits_need_more_activations(llama7b):
    editor = editor_shape(llama7b.targets)
    bf16 = plan(llama7b, editor, Parallel(ranks=8, dtype="bf16"))
    fp32 = plan(llama7b, editor, Parallel(ranks=8, dtype="fp32"))
    assert fp32.device["base parameters"] == pytest.approx(2 * bf16.device["base parameters"])
    many = plan(llama7b, editor, Parallel(ranks=8), Workload(n_edits=16, n_loc=16))
    assert many.device["activations"] > 4 * bf16.device["activations"]


def test_plan_cli_with_sizes_and_with_a_config_file(tmp_path):
    runner = CliRunner()
    sizes = [f"--{k.replace('_', '-')}={v}" for k, v in LLAMA_2_70B.items()]
    result = runner.invoke(app, ["plan", "--model-type", "llama", *sizes, "--ranks", "16", "--nodes", "2",
                                 "--zero-stage", "3", "--offload", "--device-gb", "80"])
    assert result.exit_code == 0, result.output
    assert "68.98 B base parameters" in result.output and "fits" in result.output
    assert "host memory per node" in result.output

    config = config_from_sizes("llama", **LLAMA_2_70B).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["plan", "--config", str(tmp_path / "config.json"), "--ranks", "8",
                                 "--deepspeed", "deepspeed_configs/zero2_bf16.json", "--device-gb", "80", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parallel"]["zero_stage"] == 2 and data["parallel"]["dtype"] == "bf16"
    assert data["fits"] is False  # 138 GB of replicated weights
    assert data["base_params"] == 68_976_648_192
