"""Turn (prompt, target) text pairs into model inputs, aligned labels and losses.

One ``Task`` per model kind hides how each kind is fed and scored:

* causal LMs see ``prompt + " " + target``; logits at position ``t`` predict token
  ``t + 1``, so labels are stored pre-shifted (``labels[t]`` is what position ``t``
  should predict, -100 where nothing is scored);
* seq2seq LMs get the prompt in the encoder and the target in the decoder (no shift);
* sequence classifiers have one scored position per example.

Every task returns logits and labels of the same ``(batch, positions)`` shape, so the
gradient capture, meta-training losses and metrics never branch on the model kind.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mend.models.loading import ModelKind
from mend.models.prompt_window import prompt_window

IGNORE = -100


@dataclass
class TokenBatch:
    """Model inputs plus labels aligned with the logits the task returns.

    ``sequence_masks`` says, per input sequence (``"input"``, and ``"decoder"`` for
    seq2seq), which token positions exist (attention mask). ``scored_masks`` says which
    positions carry a label, per sequence: the positions a ``target`` token mode keeps.
    """

    inputs: dict[str, Tensor]
    labels: Tensor
    sequence_masks: dict[str, Tensor]
    scored_masks: dict[str, Tensor]
    # Causal LMs only compute logits from this position on (the first scored one), which
    # skips the vocabulary projection for the prompt.
    first_scored: int = 0
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device) -> TokenBatch:
        move = {k: v.to(device) for k, v in self.inputs.items()}
        return TokenBatch(
            move,
            self.labels.to(device),
            {k: v.to(device) for k, v in self.sequence_masks.items()},
            {k: v.to(device) for k, v in self.scored_masks.items()},
            self.first_scored,
            self.extra,
        )

    @property
    def size(self) -> int:
        return self.labels.shape[0]

    def rows(self, start: int, stop: int) -> TokenBatch:
        """Examples ``start:stop`` as a batch of their own."""
        labels = self.labels[start:stop]
        scored = {k: v[start:stop] for k, v in self.scored_masks.items()}
        any_scored = (labels != IGNORE).any(0)
        first = int(any_scored.nonzero()[0]) if any_scored.any() else 0
        return TokenBatch(
            {k: v[start:stop] for k, v in self.inputs.items()},
            labels,
            {k: v[start:stop] for k, v in self.sequence_masks.items()},
            scored,
            # Only causal batches trim their logits; the others always start at 0.
            first_scored=first if self.first_scored else 0,
            extra=self.extra,
        )

    def chunks(self, size: int | None) -> list[TokenBatch]:
        """The batch split into consecutive pieces of at most ``size`` examples."""
        if size is None or size >= self.size:
            return [self]
        return [self.rows(i, min(i + size, self.size)) for i in range(0, self.size, size)]

    @property
    def prompt_mask(self) -> Tensor:
        """Per causal sequence, its prompt's positions: those before the first labelled
        one, plus that one (the last prompt token, which predicts the first target token)."""
        labelled = self.labels != IGNORE
        seen = labelled.long().cumsum(1)
        return (seen == 0) | ((seen == 1) & labelled)

    @property
    def scored_labels(self) -> Tensor:
        """Labels for the positions :meth:`Task.logits` returns."""
        return self.labels[:, self.first_scored :]


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def split_prompt_target(tokenizer, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of `` target`` as they appear in ``prompt + " " + target``.

    Tokenising the joined text (not the two parts separately) keeps the ids the model
    sees at inference; offsets tell which tokens belong to the target.
    """
    if not target:
        raise ValueError("empty target")
    text = f"{prompt} {target}" if prompt else target
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    boundary = len(prompt)
    split = next(
        (i for i, (start, end) in enumerate(offsets) if end > boundary and end > start),
        len(ids),
    )
    # Special tokens appended after the text (EOS for some tokenizers) have empty offsets.
    target_ids = [t for t, (s, e) in zip(ids[split:], offsets[split:], strict=True) if e > s]
    if not target_ids:
        raise ValueError(f"target {target!r} produced no tokens")
    return ids[:split], target_ids


class Task:
    """Batching and scoring for one model kind."""

    kind: ModelKind
    # The sequence whose positions carry labels.
    scored_sequence = "input"

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def batch(self, prompts: Sequence[str], targets: Sequence[str]) -> TokenBatch:
        raise NotImplementedError

    def logits(self, model: PreTrainedModel, batch: TokenBatch) -> Tensor:
        """Logits aligned with ``batch.scored_labels`` (``(B, T, V)``)."""
        raise NotImplementedError

    def scored(self, model: PreTrainedModel, batch: TokenBatch) -> ScoredLogits:
        """The logits at the scored positions only (what scoring and edit losses read)."""
        return ScoredLogits.of(self.logits(model, batch), batch.scored_labels)

    def sequence_of(self, module_name: str) -> str:
        """Which input sequence a module's activations belong to."""
        return "input"


class CausalLMTask(Task):
    kind = "causal"

    def batch(self, prompts, targets):
        rows, labels = [], []
        for prompt, target in zip(prompts, targets, strict=True):
            prompt_ids, target_ids = split_prompt_target(self.tokenizer, prompt, target)
            ids = prompt_ids + target_ids
            # Position t predicts token t+1: the last prompt position predicts the first
            # target token.
            label = [IGNORE] * (len(prompt_ids) - 1) + target_ids + [IGNORE]
            if not prompt_ids:
                raise ValueError("causal LM edits need a non-empty prompt")
            rows.append(ids)
            labels.append(label)
        # Right padding: causal attention keeps every real position's logits identical to
        # the unpadded sequence, with no position-id bookkeeping.
        input_ids = _pad(rows, self.pad_id)
        attention = _pad([[1] * len(r) for r in rows], 0)
        label_t = _pad(labels, IGNORE)
        scored = label_t != IGNORE
        first = int(scored.any(0).nonzero()[0]) if scored.any() else 0
        return TokenBatch(
            {"input_ids": input_ids, "attention_mask": attention},
            label_t,
            {"input": attention.bool()},
            {"input": scored},
            first_scored=first,
        )

    def logits(self, model, batch):
        rows, logits = self._forward(model, batch)
        return rows.spread(logits)

    def scored(self, model, batch):
        # Laid out as (B, T, V), a batch's logits are mostly zeros: scoring reads the rows.
        rows, logits = self._forward(model, batch)
        return ScoredLogits(rows.compact(logits), batch.scored_labels)

    def _forward(self, model, batch) -> tuple[_ScoredRows, Tensor]:
        # Index positions (not a trailing count): the gathered hidden states are
        # contiguous, so the vocabulary projection is one matmul instead of a batched one.
        keep = torch.arange(batch.first_scored, batch.labels.shape[1], device=batch.labels.device)
        scored = batch.scored_labels != IGNORE
        with prompt_window(model, batch.prompt_mask), _head_on(model, scored) as rows:
            logits = model(**batch.inputs, logits_to_keep=keep, use_cache=False).logits
        return rows, logits


class _ScoredRows:
    """The positions a vocabulary projection is computed at, and how its output is laid
    back out as ``(B, T, vocab)``: zeros where nothing is scored."""

    def __init__(self, scored: Tensor):
        self.scored = scored
        self.gathered = False

    def gather(self, module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != self.scored.shape:
            return None
        self.gathered = True
        return (hidden[self.scored.to(hidden.device)].unsqueeze(0), *args[1:])

    def spread(self, logits: Tensor) -> Tensor:
        return _laid_out(self.scored.to(logits.device), logits[0]) if self.gathered else logits

    def compact(self, logits: Tensor) -> Tensor:
        """The projection's output at the scored positions only, one row each (row-major)."""
        return logits[0] if self.gathered else logits[self.scored.to(logits.device)]


@contextmanager
def _head_on(model, scored: Tensor) -> Iterator[_ScoredRows]:
    """Within the block, ``model``'s vocabulary projection runs only at the ``scored``
    positions of the kept window (a scored answer is a few tokens after a longer prompt,
    and the projection onto the vocabulary costs more per position than a decoder block):
    yields what lays its output back out (:meth:`_ScoredRows.spread`)."""
    rows = _ScoredRows(scored)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handle = head.register_forward_pre_hook(rows.gather) if isinstance(head, torch.nn.Module) else None
    try:
        yield rows
    finally:
        if handle is not None:
            handle.remove()


class Seq2SeqTask(Task):
    kind = "seq2seq"
    scored_sequence = "decoder"

    def __init__(self, tokenizer, decoder_start_token_id: int):
        super().__init__(tokenizer)
        self.decoder_start = decoder_start_token_id

    def batch(self, prompts, targets):
        enc = [self.tokenizer(p)["input_ids"] for p in prompts]
        dec_targets = [self.tokenizer(text_target=t)["input_ids"] for t in targets]
        if any(len(t) == 0 for t in dec_targets):
            raise ValueError("a target produced no tokens")
        input_ids = _pad(enc, self.pad_id)
        attention = _pad([[1] * len(r) for r in enc], 0)
        labels = _pad(dec_targets, IGNORE)
        decoder_inputs = _pad([[self.decoder_start] + t[:-1] for t in dec_targets], self.pad_id)
        decoder_attention = _pad([[1] * len(t) for t in dec_targets], 0)
        return TokenBatch(
            {
                "input_ids": input_ids,
                "attention_mask": attention,
                "decoder_input_ids": decoder_inputs,
                "decoder_attention_mask": decoder_attention,
            },
            labels,
            {"input": attention.bool(), "decoder": decoder_attention.bool()},
            {"input": attention.bool(), "decoder": labels != IGNORE},
        )

    def logits(self, model, batch):
        return model(**batch.inputs, use_cache=False).logits

    def sequence_of(self, module_name):
        return "decoder" if "decoder" in module_name.split(".") else "input"


class ClassifierTask(Task):
    """Sequence classification (FEVER-style claims on BERT): the target is a label."""

    kind = "classifier"

    def __init__(self, tokenizer, label2id: dict[str, int], num_labels: int):
        super().__init__(tokenizer)
        self.label2id = {k.lower(): v for k, v in label2id.items()}
        self.num_labels = num_labels

    def label_id(self, target: str) -> int:
        key = target.strip().lower()
        if key in self.label2id:
            return self.label2id[key]
        aliases = {"false": 0, "refutes": 0, "true": 1, "supports": 1}
        if key in aliases and aliases[key] < self.num_labels:
            return aliases[key]
        if key.isdigit() and int(key) < self.num_labels:
            return int(key)
        raise ValueError(f"target {target!r} is not a label of this classifier")

    def batch(self, prompts, targets):
        enc = [self.tokenizer(p)["input_ids"] for p in prompts]
        input_ids = _pad(enc, self.pad_id)
        attention = _pad([[1] * len(r) for r in enc], 0)
        labels = torch.tensor([[self.label_id(t)] for t in targets])
        # The pooled [CLS] position is the one that decides the label.
        cls = torch.zeros_like(attention, dtype=torch.bool)
        cls[:, 0] = True
        return TokenBatch(
            {"input_ids": input_ids, "attention_mask": attention},
            labels,
            {"input": attention.bool()},
            {"input": cls},
        )

    def logits(self, model, batch):
        return model(**batch.inputs).logits.unsqueeze(1)


def task_for(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kind: ModelKind) -> Task:
    """The task matching a loaded model's head."""
    if kind == "causal":
        return CausalLMTask(tokenizer)
    if kind == "seq2seq":
        start = model.config.decoder_start_token_id
        if start is None:
            start = tokenizer.pad_token_id
        return Seq2SeqTask(tokenizer, start)
    return ClassifierTask(tokenizer, dict(model.config.label2id or {}), model.config.num_labels)


class ScoredLogits:
    """Logits at a batch's scored positions: ``rows`` ``(n, V)``, one per label that is not
    ignored in ``labels`` ``(B, T)``, in row-major order."""

    def __init__(self, rows: Tensor, labels: Tensor):
        self.mask = labels != IGNORE
        if rows.shape[0] != int(self.mask.sum()):
            raise ValueError(f"{rows.shape[0]} rows of logits for {int(self.mask.sum())} scored positions")
        self.rows = rows
        self.targets = labels[self.mask]
        self._owner = self.mask.nonzero()[:, 0]

    @classmethod
    def of(cls, logits: Tensor, labels: Tensor) -> ScoredLogits:
        """From logits laid out as ``labels`` is (``(B, T, V)``)."""
        return cls(logits[labels != IGNORE], labels)

    def per_sequence(self, values: Tensor) -> Tensor:
        """``(B,)``: the sum of ``values`` (one per row) over each sequence's rows."""
        return values.new_zeros(self.mask.shape[0]).index_add(0, self._owner, values)

    def counts(self) -> Tensor:
        """Scored positions per sequence (at least 1, for means)."""
        return self.mask.sum(1).clamp_min(1)

    def hits(self) -> Tensor:
        """``(n,)``: whether each scored position's argmax is its label."""
        return self.rows.argmax(-1) == self.targets

    def exact(self) -> Tensor:
        """``(B,)``: whether every scored position of each sequence is a hit."""
        return self.per_sequence((~self.hits()).float()) == 0

    def nll(self) -> Tensor:
        """``(B,)``: each sequence's mean NLL over its scored positions (differentiable)."""
        losses = F.cross_entropy(self.rows.float(), self.targets, reduction="none")
        return self.per_sequence(losses) / self.counts()

    def predictions(self) -> list[Tensor]:
        """Per sequence, the argmax at each of its scored positions."""
        return list(self.rows.argmax(-1).split(self.mask.sum(1).tolist()))


def per_example_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean NLL over each example's scored tokens (``(B,)``), from logits laid out as
    ``labels`` is."""
    return ScoredLogits.of(logits, labels).nll()


def _laid_out(where: Tensor, values: Tensor) -> Tensor:
    """``values`` (one row per true entry of ``where``) at those entries of a zero tensor
    shaped ``where.shape + values.shape[1:]`` (differentiable in ``values``)."""
    out = values.new_zeros(*where.shape, *values.shape[1:])
    return out.index_put((*where.nonzero(as_tuple=True),), values)
