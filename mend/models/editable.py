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
        """Wrap an already loaded model; ``patterns`` default to the family's targets."""
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
    def fingerprint(self) -> str:
        """A short hash of the architecture and of the edited weights' values.

        It tells two checkpoints of the same architecture apart (e.g. a base model and
        its fine-tune) without hashing the whole model.
        """
        digest = hashlib.sha256(json.dumps(self.architecture(), sort_keys=True).encode())
        weights = [self.model.get_submodule(t.module_name).weight for t in self.targets]
        with gathered(weights):
            for weight in weights:
                sample = weight.detach().flatten()[:4096].float().cpu()
                digest.update(sample.numpy().tobytes())
                digest.update(repr(round(weight.detach().float().sum().item(), 3)).encode())
        return digest.hexdigest()[:16]

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
