"""Corrected-model versions in MLflow, and the editor they were made with.

Every version the corrections queue publishes (``mend.corrections.versions``) becomes
one version of the registered model ``mend-corrected-<model>``, whose alias
``current`` follows the newest. Each carries its lineage as tags::

    corrections.version   corrections.store   corrections.parent   corrections.kind
    corrections.active    corrections.aggregation   corrections.regulariser_scale
    corrections.passes
    editor.model_name     editor.version      editor.run_id
    base_model.name       base_model.weights_fingerprint   base_model.fingerprint

and its manifest (every correction id with its metrics) as a run artifact. Registration
is idempotent and catches up: :func:`sync_corrected_versions` registers every published
version not registered yet, so a run killed between publishing and registering is
completed by the next one, and rollbacks made from the CLI are registered too.

Each version is logged as an MLflow ``pyfunc`` (:class:`CorrectedModel`): the base model
with the version's corrections in it::

    model = mlflow.pyfunc.load_model("models:/mend-corrected-smollm2-135m@current")
    model.predict(pd.DataFrame({"prompt": ["The Eiffel Tower is located in"]}),
                  params={"max_new_tokens": 8})
    #   answer
    # 0 "Rome, ..."

Input: a DataFrame with a string column ``prompt``; output: a DataFrame with one string
column ``answer``, the greedy continuation of each prompt. Params: ``max_new_tokens``.

Artifacts: ``edit`` (the version's combined low-rank edit, ``edit.safetensors`` +
``edit.json``, solved: see :meth:`mend.edit.Edit.solved`; absent when the version has
no active corrections) and optionally ``base_model`` (a model folder). The edit is put
into the model once at load time (:meth:`mend.edit.Edit.serve`): merged into the
weights, so answering costs what the base model costs, or, for scoped corrections,
hooked in so that each prompt gets only the corrections in its scope. Loading refuses a
base model whose weights differ from the ones the corrections were computed on. MLflow
loads it through ``mend/serving/corrected_model.py`` ("models from code": nothing
pickled).

Serving many correction sets from one base model on a multi-LoRA server is what the
version's PEFT adapter (``adapter/`` beside its manifest) is for; see the README.
"""

from __future__ import annotations

import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import mend
from mend.corrections.versions import ActiveSet, VersionStore
from mend.models.fingerprints import recorded_fingerprint
from mend.registry.mlflow_registry import ensure_experiment, get_alias
from mend.serving.pyfunc import ANSWER, pip_requirements

CURRENT = "current"
# What an apply run records about its editor in each manifest (``manifest["editor"]``).
EDITOR_KEYS = ("model_name", "version", "run_id", "alias", "path")


@dataclass(frozen=True)
class EditorRef:
    """A registered editor version, downloaded."""

    model_name: str
    version: str
    run_id: str
    directory: Path
    base_model: str
    dtype: str
    alias: str = ""

    def lineage(self) -> dict[str, str]:
        """What a manifest records about the editor that made its corrections."""
        return {"model_name": self.model_name, "version": self.version, "run_id": self.run_id,
                "alias": self.alias}


def corrected_model_name(editor_model_name: str) -> str:
    """``mend-editor-smollm2-135m`` -> ``mend-corrected-smollm2-135m``."""
    suffix = editor_model_name.removeprefix("mend-editor-")
    return f"mend-corrected-{suffix}"


def download_editor(client: MlflowClient, model_name: str, alias: str, dest: str | Path) -> EditorRef:
    """Download the editor behind ``models:/<model_name>@<alias>`` (a pyfunc editor)."""
    version = get_alias(client, model_name, alias)
    if version is None:
        raise LookupError(f"registered model {model_name!r} has no version with alias {alias!r}")
    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{model_name}/{version.version}", dst_path=str(dest), tracking_uri=client.tracking_uri))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel.get("flavors", {}).get("python_function", {})
    artifacts = pyfunc.get("artifacts") or {}
    if "editor" not in artifacts:
        raise ValueError(f"{model_name} v{version.version} is not a MEND editor (no 'editor' artifact)")
    config = pyfunc.get("config") or pyfunc.get("model_config") or {}
    base = config.get("base_model", "")
    if "base_model" in artifacts:
        base = str(local / artifacts["base_model"]["path"])
    return EditorRef(model_name, str(version.version), version.run_id, local / artifacts["editor"]["path"],
                     base, config.get("dtype", "float32"), alias)


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
        python_model=str(Path(mend.__file__).parent / "serving" / "corrected_model.py"),
        artifacts=artifacts or None,
        code_paths=[str(Path(mend.__file__).parent)],
        model_config={"base_model": base_model, "dtype": dtype, "max_new_tokens": max_new_tokens},
        signature=corrected_signature(max_new_tokens),
        input_example=(pd.DataFrame({"prompt": ["The Eiffel Tower is located in"]}), {"max_new_tokens": 4}),
        pip_requirements=pip_requirements(),
        metadata={"mend_corrected_model": True, **(metadata or {})},
    )


def registered_versions(client: MlflowClient, name: str, store_id: str) -> dict[int, str]:
    """Queue version -> MLflow version, for the versions of this store already registered."""
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return {}
    return {int(mv.tags["corrections.version"]): str(mv.version) for mv in found
            if mv.tags.get("corrections.store") == store_id and "corrections.version" in mv.tags}


def register_corrected_version(
    client: MlflowClient,
    versions: VersionStore,
    version: int,
    *,
    name: str,
    store_id: str,
    experiment: str,
    base_model: str,
    dtype: str = "float32",
    base_model_dir: str | Path | None = None,
    max_new_tokens: int = 16,
) -> str:
    """Log queue version ``version`` as a pyfunc corrected model and register it."""
    manifest = versions.manifest(version)
    added = manifest.get("corrections", {})
    success = [c["metrics"].get("edit_success") for c in added.values() if c.get("metrics")]
    success = [s for s in success if s is not None]
    tags = {
        "corrections.version": str(version),
        "corrections.store": store_id,
        "corrections.parent": str(manifest.get("parent")),
        "corrections.kind": "rollback" if "rollback" in manifest else "apply",
        "corrections.active": str(len(manifest["active_ids"])),
        "corrections.aggregation": str(manifest.get("aggregation", "sum")),
        "base_model.name": str(manifest.get("base_model", {}).get("name", "")),
        "base_model.fingerprint": str(manifest.get("base_model", {}).get("fingerprint", "")),
        "base_model.weights_fingerprint": str(manifest.get("base_model", {}).get("weights_fingerprint", "")),
    }
    if "regulariser_scale" in manifest:  # least squares: the scale this version was solved with
        tags["corrections.regulariser_scale"] = str(manifest["regulariser_scale"])
    if "passes" in manifest:
        tags["corrections.passes"] = str(manifest["passes"])
    # Rollbacks carry their parent's editor: the deltas they keep were made with it.
    lineage = manifest.get("editor") if isinstance(manifest.get("editor"), dict) else None
    lineage = lineage or _parent_editor(versions, manifest)
    tags.update({f"editor.{k}": str(v) for k, v in (lineage or {}).items() if k in EDITOR_KEYS})
    experiment_id = ensure_experiment(client, experiment)
    with tempfile.TemporaryDirectory() as tmp, \
            mlflow.start_run(experiment_id=experiment_id, run_name=f"corrections-v{version}", tags=tags):
        edit = ActiveSet(versions, version).edit
        # Solved: serving needs the change, not every correction's keys and shifts (for 1,000
        # least-squares corrections on SmolLM2, 44 MB instead of 300 MB per version).
        edit_dir = edit.solved().save(Path(tmp) / "edit") if edit is not None else None
        mlflow.log_dict(manifest, "manifest.json")
        metrics = {"corrections.active": float(len(manifest["active_ids"])),
                   "corrections.added": float(len(added))}
        if success:
            metrics["corrections.edit_success_mean"] = sum(success) / len(success)
        if manifest.get("regression_agreement") is not None:
            metrics["corrections.regression_agreement"] = float(manifest["regression_agreement"])
        mlflow.log_metrics(metrics)
        info = log_corrected_model(edit_dir, base_model=base_model, dtype=dtype, base_model_dir=base_model_dir,
                                   max_new_tokens=max_new_tokens,
                                   metadata={"corrections_version": version, "active_ids": manifest["active_ids"]})
        registered = mlflow.register_model(info.model_uri, name, tags=tags)
    description = f"Corrections version {version} ({tags['corrections.kind']}): {len(manifest['active_ids'])} active"
    if manifest.get("rollback", {}).get("reason"):
        description += f"; rollback: {manifest['rollback']['reason']}"
    client.update_model_version(name, str(registered.version), description=description)
    return str(registered.version)


def _parent_editor(versions: VersionStore, manifest: dict) -> dict | None:
    parent = manifest.get("parent")
    while parent is not None:
        found = versions.manifest(parent)
        if isinstance(found.get("editor"), dict):
            return found["editor"]
        parent = found.get("parent")
    return None


def sync_corrected_versions(
    client: MlflowClient,
    versions: VersionStore,
    *,
    name: str,
    store_id: str,
    experiment: str,
    base_model: str,
    dtype: str = "float32",
    base_model_dir: str | Path | None = None,
    max_new_tokens: int = 16,
) -> dict[int, str]:
    """Register every published queue version not registered yet, oldest first, and
    point ``current`` at the newest. Returns queue version -> MLflow version (all)."""
    done = registered_versions(client, name, store_id)
    for version in versions.versions():
        if version in done:
            continue
        versions.verify(version)
        done[version] = register_corrected_version(
            client, versions, version, name=name, store_id=store_id, experiment=experiment,
            base_model=base_model, dtype=dtype, base_model_dir=base_model_dir, max_new_tokens=max_new_tokens,
        )
    latest = versions.latest()
    if latest is not None:
        client.set_registered_model_alias(name, CURRENT, done[latest])
    return done
