"""A Hugging Face model together with everything needed to edit it."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mend.distributed import gathered
from mend.models.loading import ModelKind, load_pretrained
from mend.models.targets import EditTarget, Layout, find_targets
from mend.models.tasks import Task, task_for


@dataclass
class EditableModel:
    """A model, its tokenizer, the matrices to edit and the task that scores edits."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    kind: ModelKind
    targets: list[EditTarget]
    task: Task = field(repr=False)
    # What EditableModel.load() was given (folder, .gguf, packaged or hub name), so that
    # editors and published corrections can say how to load their base model again.
    source: str | None = None

    @classmethod
    def wrap(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str | None = None,
        kind: ModelKind | None = None,
        patterns: Sequence[str] | None = None,
    ) -> EditableModel:
        """Wrap an already loaded model; ``patterns`` default to the family's targets.

        Its weights are frozen (``requires_grad`` off): an edit's gradient is taken with
        respect to the edited matrices' inputs and outputs (:mod:`mend.capture`), never
        their weights, and a weight that wanted a gradient would make every backward pass
        run through, and keep a gradient for, the whole model. Methods that do train
        weights (fine-tuning baselines) turn on their own matrices while they run."""
        for p in model.parameters():
            p.requires_grad_(False)
        if kind is None:
            if getattr(model.config, "is_encoder_decoder", False):
                kind = "seq2seq"
            elif "SequenceClassification" in type(model).__name__:
                kind = "classifier"
            else:
                kind = "causal"
        name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # batching needs one; never a scored label
        return cls(
            model, tokenizer, name, kind, find_targets(model, patterns), task_for(model, tokenizer, kind)
        )

    @classmethod
    def load(
        cls,
        source: str | os.PathLike,
        *,
        dtype: str | torch.dtype = "float32",
        kind: ModelKind | None = None,
        patterns: Sequence[str] | None = None,
    ) -> EditableModel:
        """Load from a folder, a ``.gguf`` file, a packaged short name or a hub name."""
        model, tokenizer, name = load_pretrained(source, dtype=dtype, kind=kind)
        loaded = cls.wrap(model, tokenizer, name=name, kind=kind, patterns=patterns)
        loaded.source = str(source)
        return loaded

    def retargeted(self, patterns: Sequence[str] | None) -> EditableModel:
        """The same model and tokenizer, editing the matrices ``patterns`` name (None: the
        family's default)."""
        wrapped = EditableModel.wrap(self.model, self.tokenizer, name=self.name, kind=self.kind, patterns=patterns)
        wrapped.source = self.source
        return wrapped

    @property
    def layouts(self) -> dict[str, Layout]:
        return {t.module_name: t.layout for t in self.targets}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def architecture(self) -> dict:
        """What an editor must agree with: model type and the edited matrices' shapes."""
        return {
            "model_type": self.model.config.model_type,
            "targets": {t.module_name: [t.d_in, t.d_out] for t in self.targets},
        }

    @torch.no_grad()
    def weights_fingerprint(self) -> str:
        """A short hash of the model's weights alone: the model type and every parameter's
        name, shape, first values and sum.

        The same checkpoint gives the same fingerprint whichever matrices it is loaded to
        edit; a fine-tune of it gives another. Editors and edits record it as
        ``weights_fingerprint`` (:func:`mend.models.fingerprints.same_weights` compares two records).
        """
        params = list(self.model.named_parameters())
        # Every edit checks it: kept on the module (shared by retargeted wrappers) until a
        # parameter is replaced or changed in place (its version counter moves). ZeRO-3
        # shards change behind their placeholders, so those are hashed every time.
        state = None if any(hasattr(w, "ds_id") for _, w in params) else \
            tuple((w.data_ptr(), w._version, tuple(w.shape)) for _, w in params)
        kept = getattr(self.model, "_mend_weights_fingerprint", None)
        if state is not None and kept is not None and kept[0] == state:
            return kept[1]
        digest = hashlib.sha256(self.model.config.model_type.encode())
        for name, weight in params:
            with gathered([weight]):  # one at a time: ZeRO-3 shards stay small
                digest.update(f"{name}:{list(weight.shape)}".encode())
                digest.update(weight.detach().flatten()[:4096].float().cpu().numpy().tobytes())
                digest.update(repr(round(weight.detach().float().sum().item(), 3)).encode())
        fingerprint = digest.hexdigest()[:16]
        if state is not None:
            self.model._mend_weights_fingerprint = (state, fingerprint)
        return fingerprint

    @torch.no_grad()
    def targets_fingerprint(self) -> str:
        """A short hash of the architecture, the edited matrices and their weights: it
        changes with the target set as well as with the weights.

        What editors and edits recorded as ``fingerprint`` before
        :meth:`weights_fingerprint`; still written beside it and compared when an older
        record has nothing else.
        """
        digest = hashlib.sha256(json.dumps(self.architecture(), sort_keys=True).encode())
        weights = [self.model.get_submodule(t.module_name).weight for t in self.targets]
        with gathered(weights):
            for weight in weights:
                sample = weight.detach().flatten()[:4096].float().cpu()
                digest.update(sample.numpy().tobytes())
                digest.update(repr(round(weight.detach().float().sum().item(), 3)).encode())
        return digest.hexdigest()[:16]

    def matches(self, recorded: dict) -> bool:
        """Whether this model has the weights a ``base_model`` record (of an editor or an
        edit) was made on: by weights fingerprint, or for older records by their
        target-set fingerprint (:mod:`mend.models.fingerprints`); True when the record
        has neither."""
        if recorded.get("weights_fingerprint"):
            return recorded["weights_fingerprint"] == self.weights_fingerprint()
        if recorded.get("fingerprint"):
            return recorded["fingerprint"] == self.targets_fingerprint()
        return True

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy continuations of ``prompts`` (new text only)."""
        tok = self.tokenizer
        if self.kind == "classifier":
            batch = self.task.batch(prompts, ["0"] * len(prompts))
            labels = self.model(**batch.inputs).logits.argmax(-1).tolist()
            id2label = self.model.config.id2label or {}
            return [str(id2label.get(i, i)) for i in labels]
        previous_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(list(prompts), return_tensors="pt", padding=True).to(self.device)
        finally:
            tok.padding_side = previous_side
        out = self.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.task.pad_id,
            num_beams=1,
        )
        if self.kind == "causal":
            out = out[:, enc["input_ids"].shape[1] :]
        return tok.batch_decode(out, skip_special_tokens=True)
