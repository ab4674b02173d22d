"""A routed (scoped) edit for multi-LoRA servers: one adapter per correction plus a router.

A server that cannot run the scoped forward pass in-process (vLLM, LoRAX, TGI with
several adapters loaded) can still serve scoped corrections: each correction is its own
PEFT LoRA adapter, and an :class:`AdapterRouter` in front of the server decides per
request which adapters it falls within, exactly by the rule of the forward pass
(:func:`mend.scope.routing.route`). The layout written by :func:`save_routed_adapters`::

    adapters/<name>/   one PEFT LoRA adapter per correction (adapter_config.json + safetensors)
    merged/            every correction summed into one adapter: the weight-space version
                       for servers that cannot route (it changes unrelated answers too)
    router/index.json  format, base model, adapter name and request id of each correction
    router/index.safetensors   the scope keys, their owners, subjects' spellings and relation keys
    router/scope/      the scope model the keys were made with

Per request: ``names = router.pick(model, [prompt])[0]``; none -> the base model; one ->
that adapter (vLLM ``LoRARequest``, LoRAX ``adapter_id``); several (rare: corrections
about one subject) -> the first, which scores best, or all of them merged linearly where
the server can (LoRAX ``merged_adapters``) — what the forward pass does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mend.edit import Edit
from mend.export.peft import save_as_lora
from mend.models.editable import EditableModel
from mend.scope.model import ScopeModel
from mend.scope.routing import route
from mend.scope.scores import Padded
from mend.scope.states import block_states

ROUTER_FORMAT = "mend-adapter-router/1"


def adapter_name(index: int, request_id: str) -> str:
    """A folder and adapter name for request ``index``: unique, and safe on any server."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", request_id)[:48]
    return f"c{index:05d}-{safe}" if safe else f"c{index:05d}"


def save_routed_adapters(edit: Edit, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write ``edit`` (a routed, e.g. scoped, edit) as per-correction adapters + router."""
    change = edit.change
    if not getattr(change, "routed", False):
        raise ValueError(f"a {edit.aggregation} edit is not routed: export it with Edit.to_peft")
    directory = Path(directory)
    name = base_model_name_or_path or edit.base_model.get("name")
    kind = edit.base_model.get("kind", "causal")
    names = [adapter_name(i, r.request_id) for i, r in enumerate(edit.requests)]
    for index, adapter in enumerate(names):
        save_as_lora(edit.select([index]).deltas, edit.layouts, directory / "adapters" / adapter, name, kind)
    save_as_lora(edit.deltas, edit.layouts, directory / "merged", name, kind)
    router = directory / "router"
    router.mkdir(parents=True, exist_ok=True)
    change.scope.save(router / "scope")
    save_file({"keys": change.keys.detach().contiguous().cpu(), "key_request": change.key_request.contiguous().cpu(),
               "subjects": change.subjects.contiguous().cpu(), "relations": change.relations.detach().contiguous().cpu()},
              router / "index.safetensors")
    (router / "index.json").write_text(json.dumps({
        "format": ROUTER_FORMAT, "base_model": edit.base_model, "scope_fingerprint": change.scope.fingerprint(),
        "adapters": names, "request_ids": [r.request_id for r in edit.requests],
    }, indent=2))
    return directory


class AdapterRouter:
    """Picks the per-correction adapters a request falls within (see the module docs)."""

    def __init__(self, scope: ScopeModel, keys, key_request, subjects, adapters: list[str], relations=None):
        self.scope, self.keys, self.key_request, self.subjects = scope, keys, key_request, subjects
        self.relations = relations if relations is not None else keys.new_zeros(len(keys), 0)
        self.adapters = adapters

    @classmethod
    def load(cls, directory: str | Path) -> AdapterRouter:
        router = Path(directory) / "router"
        meta = json.loads((router / "index.json").read_text())
        if meta.get("format") != ROUTER_FORMAT:
            raise ValueError(f"{router} is not a {ROUTER_FORMAT} index (format={meta.get('format')})")
        scope = ScopeModel.load(router / "scope")
        if scope.fingerprint() != meta["scope_fingerprint"]:
            raise ValueError(f"{router}: its scope model does not match the fingerprint in index.json")
        index = load_file(router / "index.safetensors")
        return cls(scope, index["keys"], index["key_request"], index["subjects"], meta["adapters"], index.get("relations"))

    @torch.no_grad()
    def pick(self, model: EditableModel, prompts: Sequence[str]) -> list[list[str]]:
        """Per prompt, the adapters it switches on, the best first (empty: the base model).

        ``model`` is the base model (only its blocks up to the scope's are run)."""
        states = block_states(model, prompts, self.scope.config.layer)
        padded = Padded.of(states, self.scope.config.skip_first, max_tokens=max((len(s.ids) for s in states), default=1))
        routing = route(self.scope, self.scope.embed(padded.states), padded.usable, padded.ids, self.keys,
                        self.key_request, self.subjects, len(self.adapters),
                        self.scope.embed_relation(padded.last()), self.relations)
        return [[self.adapters[i] for i in active.tolist()] for active in routing.active]
