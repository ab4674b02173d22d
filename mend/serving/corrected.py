"""A corrected model as an MLflow ``pyfunc``: the base model with a published version's
corrections in it.

    model = mlflow.pyfunc.load_model("models:/mend-corrected-smollm2-135m@current")
    model.predict(pd.DataFrame({"prompt": ["The Eiffel Tower is located in"]}),
                  params={"max_new_tokens": 8})
    #   answer
    # 0 "Rome, ..."

Input: a DataFrame with a string column ``prompt``; output: a DataFrame with one string
column ``answer``, the greedy continuation of each prompt. Params: ``max_new_tokens``.

Artifacts: ``edit`` (the version's combined low-rank edit, ``edit.safetensors`` +
``edit.json``, solved: see :meth:`mend.edit.Edit.solved`; absent when the version has
no active corrections) and optionally
``base_model`` (a model folder). The edit is put into the model once at load time
(:meth:`mend.edit.Edit.serve`): merged into the weights, so answering costs what the base
model costs, or, for scoped corrections, hooked in so that each prompt gets only the
corrections in its scope. Loading refuses a base model whose
weights differ from the ones the corrections were computed on.

Serving many correction sets from one base model on a multi-LoRA server is what the
version's PEFT adapter (``adapter/`` beside its manifest) is for; see the README.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import mend
from mend.models.fingerprints import recorded_fingerprint
from mend.serving.pyfunc import ANSWER, pip_requirements


def corrected_signature(max_new_tokens: int = 16) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string", ANSWER)]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", max_new_tokens)]),
    )


class CorrectedModel(mlflow.pyfunc.PythonModel):
    """See the module docstring for the input and output contract."""

    def load_context(self, context) -> None:
        from mend.edit import Edit
        from mend.models.editable import EditableModel

        config = dict(context.model_config or {})
        base = context.artifacts.get("base_model") or config["base_model"]
        edit_dir = context.artifacts.get("edit")
        edit = Edit.load(edit_dir) if edit_dir else None
        patterns = [re.escape(n) for n in sorted(edit.modules)] if edit is not None else None
        self.model = EditableModel.load(base, dtype=config.get("dtype", "float32"), patterns=patterns)
        if edit is not None:
            if not self.model.matches(edit.base_model):
                expected = recorded_fingerprint(edit.base_model)
                raise ValueError(
                    f"the corrections were computed on base model {edit.base_model.get('name')!r} "
                    f"(fingerprint {expected}); {base!r} has weights fingerprint {self.model.weights_fingerprint()}"
                )
            edit.serve(self.model)
        self.n_corrections = len(edit.requests) if edit is not None else 0
        self.max_new_tokens = int(config.get("max_new_tokens", 16))
        self._lock = threading.Lock()

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in frame:
            raise ValueError("input needs a 'prompt' column")
        prompts = [p if isinstance(p, str) else "" for p in frame["prompt"]]
        max_new = int((params or {}).get("max_new_tokens") or self.max_new_tokens)
        with self._lock:
            answers = self.model.generate(prompts, max_new_tokens=max_new) if prompts else []
        return pd.DataFrame({ANSWER: [a.strip() for a in answers]})


def log_corrected_model(
    edit_dir: str | Path | None,
    *,
    base_model: str,
    dtype: str = "float32",
    base_model_dir: str | Path | None = None,
    max_new_tokens: int = 16,
    metadata: dict | None = None,
    name: str = "corrected_model",
):
    """Log a corrected model (``edit_dir`` may be None: no active corrections) in the active run."""
    artifacts = {}
    if edit_dir is not None:
        artifacts["edit"] = str(edit_dir)
    if base_model_dir is not None:
        artifacts["base_model"] = str(base_model_dir)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("corrected_model.py")),
        artifacts=artifacts or None,
        code_paths=[str(Path(mend.__file__).parent)],
        model_config={"base_model": base_model, "dtype": dtype, "max_new_tokens": max_new_tokens},
        signature=corrected_signature(max_new_tokens),
        input_example=(pd.DataFrame({"prompt": ["The Eiffel Tower is located in"]}), {"max_new_tokens": 4}),
        pip_requirements=pip_requirements(),
        metadata={"mend_corrected_model": True, **(metadata or {})},
    )
