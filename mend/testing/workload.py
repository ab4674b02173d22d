"""A meta-training workload on disk: a LLaMA checkpoint folder, zsRE files, a config.

Used by the distributed tests (tiny model) and by ``bench/zero_scaling.py`` (a larger
one): multi-rank runs are separate processes, so everything they need is a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from mend.testing.synthetic import synthetic_records
from mend.testing.tokenizer import VOCAB, tiny_tokenizer

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)


def write_llama(folder: Path, seed: int = 0, **sizes) -> Path:
    """A randomly initialised LLaMA (tiny by default) saved with the tiny tokenizer."""
    dims = {**TINY, **sizes}
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=128, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, **dims)
    model = LlamaForCausalLM(config).eval()
    model.config._name_or_path = "tiny-llama"
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_zsre(path: Path, n: int, seed: int) -> Path:
    """Synthetic edits in the zsRE file format."""
    rows = [
        {"src": r.prompt, "alt": r.target, "rephrase": r.rephrases[0],
         "loc": r.locality[0].prompt, "loc_ans": r.locality[0].answer}
        for r in synthetic_records(n, seed=seed)
    ]
    path.write_text(json.dumps(rows))
    return path


def write_workload(root: Path, model_sizes: dict | None = None, **overrides) -> Path:
    """Model, data and a training config under ``root``; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    model_dir = root / "model"
    if not (model_dir / "config.json").exists():
        write_llama(model_dir, **(model_sizes or {}))
    train = write_zsre(root / "train.json", 48, seed=0)
    val = write_zsre(root / "val.json", 6, seed=1)
    config = {
        "model": str(model_dir),
        "dtype": "float32",
        "editor": {"rank": 32, "down_init": "xavier", "edit_lr_init": 1e-4},
        "data": {"train": [{"path": str(train)}], "validation": [{"path": str(val)}]},
        "seed": 0,
        "lr": 1e-3,
        "lr_edit_lrs": 1e-3,
        "c_edit": 1.0,
        "n_loc": 2,
        "grad_accum": 1,
        "max_steps": 8,
        "val_every": 4,
        "val_size": 6,
        "patience": 1000,
        "checkpoint_every": 4,
        "output_dir": str(root / "run"),
    }
    config.update(overrides)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
