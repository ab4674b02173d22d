"""MEMIT's values: per fact, the residual stream after the last edited block that makes
the model say the target (MEMIT's ``compute_z``).

For each fact an additive ``delta`` on that block's output at the subject's last token is
optimised with Adam: the target's NLL, plus a KL term that keeps the next-token
distribution after "{subject} is a" where it was (so the subject is not rewritten
wholesale), plus a weight decay relative to the state's norm; after each step ``delta`` is
clamped to a share of that norm; a fact stops once its loss is low (as MEMIT's loop
does). Facts are optimised in batches of similar length; each fact's loss only
reaches its own ``delta`` (and Adam is per-coordinate), so batching does not change them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from mend.baselines.config import ValueConfig
from mend.baselines.keys import encode_at_subject, subject_end, token_ending_at
from mend.data.records import EditRecord
from mend.models.blocks import block_output, decoder_blocks
from mend.models.editable import EditableModel
from mend.models.tasks import per_example_nll


@contextmanager
def _frozen(model: EditableModel) -> Iterator[None]:
    """No weight needs a gradient while the deltas are optimised (only they do)."""
    params = list(model.model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def _shifted(model: EditableModel, layer: int, delta: Tensor, where: dict) -> Iterator[None]:
    """Adds ``delta[where["facts"]]`` to block ``layer``'s output at ``where["rows"]``,
    ``where["positions"]``; records the unshifted states there in ``where["before"]``."""

    def hook(module, args, output):
        h = block_output(output)
        index = (where["rows"], where["positions"])
        where["before"] = h[index].detach()
        h = h.index_put(index, delta[where["facts"]], accumulate=True)
        return h if isinstance(output, Tensor) else (h, *output[1:])

    handle = decoder_blocks(model.model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _inputs(model: EditableModel, records: Sequence[EditRecord], ends: Sequence[int]):
    """For ``records``: the scored batch, its subject tokens, the "{subject} is a" inputs,
    their subject tokens and last tokens."""
    device, tok = model.device, model.tokenizer
    batch = model.task.batch([r.prompt for r in records], [r.target for r in records]).to(device)
    # Scored texts are "prompt target" tokenised together (mend.models.tasks); the subject
    # ends at the same token there as in the prompt alone, but read it off that text.
    positions = torch.tensor([
        token_ending_at(tok(f"{r.prompt} {r.target}", return_offsets_mapping=True)["offset_mapping"], end)
        for r, end in zip(records, ends, strict=True)], device=device)
    kl_inputs, kl_positions = encode_at_subject(model, [f"{r.subject} is a" for r in records],
                                                [len(r.subject) for r in records])
    kl_inputs = {k: v.to(device) for k, v in kl_inputs.items()}
    return batch, positions, kl_inputs, kl_positions.to(device), kl_inputs["attention_mask"].sum(1) - 1


def _optimise(model: EditableModel, records: Sequence[EditRecord], layer: int, config: ValueConfig) -> Tensor:
    n, device = len(records), model.device
    ends = [subject_end(r.prompt, r.subject) for r in records]
    delta = torch.zeros(n, model.model.config.hidden_size, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=config.lr)
    state = kl_init = None
    active = torch.arange(n, device=device)  # facts still optimised (MEMIT stops a fact at a low loss)
    for step in range(config.steps):
        batch, positions, kl_inputs, kl_positions, kl_last = _inputs(
            model, [records[i] for i in active.tolist()], [ends[i] for i in active.tolist()])
        rows = torch.arange(len(active), device=device)
        rewrite = {"rows": rows, "positions": positions, "facts": active}
        with _shifted(model, layer, delta, rewrite):
            logits = model.task.logits(model.model, batch)
        nll = per_example_nll(logits, batch.scored_labels)
        with _shifted(model, layer, delta, {"rows": rows, "positions": kl_positions, "facts": active}):
            kl_logits = model.model(**kl_inputs, use_cache=False).logits[rows, kl_last]
        log_probs = F.log_softmax(kl_logits.float(), -1)
        if state is None:  # the first pass runs with delta = 0 on every fact: the unedited model
            state, kl_init = rewrite["before"].float(), log_probs.detach()
        kl = (kl_init[active].exp() * (kl_init[active] - log_probs)).sum(-1)
        decay = config.weight_decay * delta[active].norm(dim=1) / state[active].norm(dim=1) ** 2
        loss = nll + config.kl_factor * kl + decay
        going = loss.detach() >= config.stop_loss
        if step == config.steps - 1 or not going.any():
            break
        optimizer.zero_grad(set_to_none=True)
        loss[going].sum().backward()
        kept = delta.detach().clone()
        optimizer.step()
        active = active[going]
        with torch.no_grad():
            # Adam's momentum would move facts that have stopped: they keep their delta.
            stopped = torch.ones(n, dtype=torch.bool, device=device)
            stopped[active] = False
            delta[stopped] = kept[stopped]
            limit = config.clamp_norm_factor * state.norm(dim=1, keepdim=True)
            norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta.mul_(torch.where(norm > limit, limit / norm, torch.ones_like(norm)))
    return (state + delta.detach()).cpu()


def compute_values(model: EditableModel, records: Sequence[EditRecord], layer: int, config: ValueConfig) -> Tensor:
    """Each record's value ``z`` ``(n, d_model)``: the state after block ``layer`` at its
    subject's last token that makes the model answer its target."""
    out = torch.zeros(len(records), model.model.config.hidden_size)
    # Batches of similar length waste little on padding; each fact's value is its own.
    order = sorted(range(len(records)), key=lambda i: len(records[i].prompt) + len(records[i].target))
    with _frozen(model):
        for start in range(0, len(order), config.batch_size):
            chunk = order[start : start + config.batch_size]
            out[chunk] = _optimise(model, [records[i] for i in chunk], layer, config)
    return out


class ValueStore:
    """Values computed once per model state, layer, value settings and fact; shared by
    methods that use the same values (MEMIT and AlphaEdit), optionally kept as a
    safetensors file so a later run reuses them."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else None
        self._values: dict[str, Tensor] = {}
        self.seconds = 0.0  # spent optimising values in this process
        self.computed = 0  # values optimised in this process (the rest were cached)
        if self.path is not None and self.path.is_file():
            self._values = dict(load_file(str(self.path)))

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def key(state: str, layer: int, config: ValueConfig, record: EditRecord) -> str:
        payload = [state, layer, config.model_dump(), record.prompt, record.target, record.subject]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def values(self, model: EditableModel, records: Sequence[EditRecord], layer: int, config: ValueConfig,
               state: str) -> Tensor:
        """``z`` for ``records`` (``(n, d_model)``); ``state`` identifies the model's weights."""
        keys = [self.key(state, layer, config, r) for r in records]
        todo = [i for i, key in enumerate(keys) if key not in self._values]
        if todo:
            started = time.perf_counter()
            fresh = compute_values(model, [records[i] for i in todo], layer, config)
            self.seconds += time.perf_counter() - started
            self.computed += len(todo)
            for i, z in zip(todo, fresh, strict=True):
                self._values[keys[i]] = z.clone()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                save_file(self._values, str(self.path))
        return torch.stack([self._values[key] for key in keys])
