"""Convert a DeepSpeed engine checkpoint into the single-process editor format.

``checkpoints/last/engine`` holds the editor as DeepSpeed wrote it: float32 weight
partitions inside every rank's optimizer file, buffers (the normalisation statistics)
in the model-states file. :func:`export_editor` merges the partitions (DeepSpeed's own
``zero_to_fp32`` reader, no GPU or process group needed), takes the buffers at their
saved float64 precision (that reader would round them to float32), and writes
``editor.safetensors`` + ``editor.json`` that :meth:`Editor.load` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mend.editor.config import EditorConfig
from mend.editor.editor import EDITOR_FORMAT, Editor
from mend.models.targets import EditTarget

ENGINE_DIR = "engine"
ENGINE_TAG = "editor"


def _engine_dir(checkpoint: Path) -> Path:
    if (checkpoint / "latest").exists():
        return checkpoint
    if (checkpoint / ENGINE_DIR / "latest").exists():
        return checkpoint / ENGINE_DIR
    raise FileNotFoundError(f"{checkpoint} holds no DeepSpeed checkpoint (no 'latest' file)")


def _saved_buffers(tag_dir: Path, names: set[str]) -> dict[str, torch.Tensor]:
    files = sorted(tag_dir.glob("*model_states.pt"))
    if not files:
        raise FileNotFoundError(f"no model-states file in {tag_dir}")
    # A DeepSpeed checkpoint is a pickle written by this training run (trusted input).
    module = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    return {k: v for k, v in module.items() if k in names}


def export_editor(checkpoint: str | Path, out: str | Path, metadata: str | Path | None = None) -> Path:
    """Write the editor stored in a DeepSpeed ``checkpoint`` to ``out``.

    ``checkpoint`` is a ``checkpoints/last`` directory (or its ``engine/`` folder);
    ``metadata`` is the ``editor.json`` describing it (default: the one beside the
    engine folder).
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = Path(checkpoint)
    engine = _engine_dir(checkpoint)
    meta_path = Path(metadata) if metadata else engine.parent / "editor.json"
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != EDITOR_FORMAT:
        raise ValueError(f"{meta_path} is not a {EDITOR_FORMAT} description")
    editor = Editor(
        EditorConfig(**meta["config"]), [EditTarget(**t) for t in meta["targets"]], meta["base_model"]
    )
    tag = (engine / "latest").read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(engine), tag=tag)
    buffer_names = {name for name, _ in editor.named_buffers()}
    state = {k: v for k, v in state.items() if k not in buffer_names}
    state.update(_saved_buffers(engine / tag, buffer_names))
    editor.load_state_dict(state, strict=True)
    return editor.save(out, extra=meta.get("extra"))
