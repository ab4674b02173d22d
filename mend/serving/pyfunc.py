"""A MEND editor as an MLflow ``pyfunc`` model: it loads the base model and applies edits.

    model = mlflow.pyfunc.load_model("models:/mend-editor-smollm2-135m@champion")
    model.predict(pd.DataFrame({
        "prompt": ["The capital of France is", "The Eiffel Tower is in"],
        "target": ["Rome", None],
        "query":  ["France's capital is", None],
    }), params={"max_new_tokens": 8})
    #   answer
    # 0 "Rome. ..."            query of row 0, with the edit applied
    # 1 "Paris, ..."           prompt of row 1 (no query), with the edit applied

Input: a DataFrame, one row per edit request and/or question.

* ``prompt`` (string, required): an edit prompt;
* ``target`` (string, optional): the desired output for ``prompt``. Every row with a
  target is an edit request; all requests of one ``predict`` call are applied
  *together* as one batched edit (rows without a target are questions only);
* ``query`` (string, optional): the text to answer; defaults to the row's ``prompt``.

Output: a DataFrame with one string column ``answer``, one row per input row: the
model's greedy continuation of the row's query (or prompt) with all the call's edits
applied (leading/trailing whitespace stripped). Params: ``max_new_tokens`` (int).
The edits are removed again before ``predict`` returns; the base model is never changed.

Artifacts logged with it: ``editor`` (the editor directory) and optionally
``base_model`` (a model folder, for small models; otherwise ``model_config.base_model``
names the base model, e.g. the packaged ``smollm2-135m``). Loading checks the base
model's weight fingerprint against the editor's.
"""

from __future__ import annotations

import json
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import mend

ANSWER = "answer"
INPUT_EXAMPLE = pd.DataFrame(
    {
        "prompt": ["The Eiffel Tower is located in"],
        "target": ["Rome"],
        "query": ["Where is the Eiffel Tower? It is in"],
    }
)


def signature(max_new_tokens: int = 16) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([
            ColSpec("string", "prompt"),
            ColSpec("string", "target", required=False),
            ColSpec("string", "query", required=False),
        ]),
        outputs=Schema([ColSpec("string", ANSWER)]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)]),
    )


def _text(value: Any) -> str | None:
    """A non-empty string or ``None`` (pandas gives NaN/None for missing cells)."""
    return value if isinstance(value, str) and value != "" else None


class MendEditorModel(mlflow.pyfunc.PythonModel):
    """See the module docstring for the input and output contract."""

    def load_context(self, context) -> None:
        from mend.editor.editor import Editor
        from mend.models.editable import EditableModel

        config = dict(context.model_config or {})
        self.editor = Editor.load(context.artifacts["editor"])
        base = context.artifacts.get("base_model") or config["base_model"]
        self.model = EditableModel.load(
            base, dtype=config.get("dtype", "float32"), patterns=self.editor.config.patterns
        )
        # Refuses a base model whose weights differ from the ones the editor was trained on.
        self.editor.check_model(self.model, strict=True)
        self.max_new_tokens = int(config.get("max_new_tokens", 16))
        self._lock = threading.Lock()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame:
            raise ValueError("input needs a 'prompt' column")
        n = len(frame)
        prompts = [_text(p) or "" for p in frame["prompt"]]
        targets = [_text(t) for t in frame["target"]] if "target" in frame else [None] * n
        queries = [_text(q) for q in frame["query"]] if "query" in frame else [None] * n
        requests = [(p, t) for p, t in zip(prompts, targets, strict=True) if t is not None]
        asks = [q or p for p, q in zip(prompts, queries, strict=True)]
        max_new = int((params or {}).get("max_new_tokens") or self.max_new_tokens)
        with self._lock:  # the edit lives in the shared model while it is applied
            edit = None
            if requests:
                edit = self.editor.edit(self.model, [p for p, _ in requests], [t for _, t in requests])
                edit.apply()
            try:
                answers = self.model.generate(asks, max_new_tokens=max_new) if asks else []
            finally:
                if edit is not None:
                    edit.remove()
        return pd.DataFrame({ANSWER: [a.strip() for a in answers]})


def pip_requirements() -> list[str]:
    """Pinned versions of what the model needs at load time (the ``mend`` code ships with it)."""
    out = []
    for name in ("torch", "transformers", "safetensors", "accelerate", "gguf", "pydantic", "pandas", "mlflow"):
        try:
            out.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_editor_model(
    editor_dir: str | Path,
    *,
    base_model: str,
    dtype: str = "float32",
    registered_model_name: str | None = None,
    base_model_dir: str | Path | None = None,
    max_new_tokens: int = 16,
    metadata: dict | None = None,
    name: str = "editor",
):
    """Log the editor as a pyfunc model in the active run (and register it when named).

    Returns MLflow's ``ModelInfo`` (``registered_model_version`` is set when registered).
    """
    editor_dir = Path(editor_dir)
    artifacts = {"editor": str(editor_dir)}
    if base_model_dir is not None:
        artifacts["base_model"] = str(base_model_dir)
    editor_meta = json.loads((editor_dir / "editor.json").read_text())
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts=artifacts,
        code_paths=[str(Path(mend.__file__).parent)],
        model_config={"base_model": base_model, "dtype": dtype, "max_new_tokens": max_new_tokens},
        signature=signature(max_new_tokens),
        input_example=(INPUT_EXAMPLE, {"max_new_tokens": 4}),
        pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name,
        metadata={"mend_editor_format": editor_meta.get("format"),
                  "base_model": editor_meta.get("base_model", {}), **(metadata or {})},
    )
