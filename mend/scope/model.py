"""A scope model: decides which stored corrections a request falls within.

SERAC (Mitchell et al., ICML 2022) routes an input to an edit only when a trained scope
classifier says it is within that edit's scope; GRACE keeps one hidden-state key per
edit at one layer with a deferral radius. Ours is GRACE's key on MEMIT's position,
made separable by training as SERAC does:

* every correction has a **key**: the embedding of the base model's hidden state after
  decoder block ``layer`` at the last token of the correction's subject (the last
  prompt token when it names none);
* a request's **score** for a correction is the highest cosine between that key and the
  embedding of any of the request's prompt tokens (the first ``skip_first`` positions
  aside: their attention-sink states look alike for every input);
* the request is **in scope** when the score reaches ``threshold``, or reaches the lower
  ``subject_threshold`` and the request's prompt contains the correction's subject
  (:mod:`mend.scope.subjects`): a cheap, precise second test for the requests that name
  what the correction is about, while those that do not (aliases) need the higher score;
* the threshold rises with the number of stored corrections (``count_thresholds``): an
  unrelated request is switched on by its best-scoring key, and among more keys the
  best one scores higher by chance alone (:func:`mend.scope.fit.thresholds_by_count`);
* a request passing only by the subject test must also ask the correction's question
  when the model has a **relation key** (``relation_threshold``): the embedded state at
  the last token of the correction's prompt, against the request's last prompt token.
  The subject key cannot tell "Seoul's twin city" from "Seoul's country" when the prompt
  begins with the subject (a causal model has not read the question there); the
  relation key is trained to (:mod:`mend.scope.relation`).

The embedding ``normalise(W (h - c))`` is learned (:mod:`mend.scope.fit`) so that
rephrases of a correction score high and unrelated or same-relation/other-subject
prompts low; ``c`` is the states' mean on generic text.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mend.metadata import read_metadata

SCOPE_FORMAT = "mend-scope/1"


class ScopeConfig(BaseModel):
    """How a scope model reads states and when it switches a correction on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: int = Field(4, ge=0, description="hidden states after this decoder block (0-based)")
    dim: int = Field(128, gt=0, description="width of the learned embedding")
    threshold: float = Field(0.8, gt=-1, le=1, description="cosine at or above which a request is in scope")
    subject_threshold: float | None = Field(
        None, gt=-1, le=1,
        description="lower cosine at which a request is in scope if its prompt also contains the correction's "
        "subject (None: no subject test)",
    )
    count_thresholds: tuple[tuple[int, float], ...] = Field(
        (),
        description="(stored corrections, threshold) pairs, counts rising: with that many corrections stored, "
        "``threshold_at`` gives that threshold; in between it is interpolated in log count, at or below the first "
        "count it is ``threshold``, beyond the last the last (empty: ``threshold`` at every count)",
    )
    relation_threshold: float | None = Field(
        None, gt=-1, le=1,
        description="cosine at or above which a request's last prompt token must score against a correction's "
        "relation key for the subject test to switch the correction on (None: no relation key)",
    )
    skip_first: int = Field(1, ge=0, description="leading prompt positions never matched")
    max_active: int = Field(8, ge=1, description="most corrections switched on for one sequence")

    def threshold_at(self, stored: int) -> float:
        """The threshold a request's score must reach with ``stored`` corrections stored."""
        points = self.count_thresholds
        if not points or stored <= points[0][0]:
            return self.threshold
        for (low, below), (high, above) in zip(points, points[1:], strict=False):
            if stored <= high:
                share = math.log(stored / low) / math.log(high / low)
                return below + share * (above - below)
        return points[-1][1]


def whitening(rows: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The mean of ``rows`` (n, d) and the ``(dim, d)`` projection onto their ``dim``
    leading principal directions, scaled to unit variance: where a learned embedding
    starts, so that raw cosines start out meaningful."""
    mean = rows.mean(0)
    centred = rows - mean
    cov = centred.T @ centred / max(len(rows) - 1, 1)
    eigval, eigvec = torch.linalg.eigh(cov.double())
    top = eigval.argsort(descending=True)[:dim]
    return mean, (eigvec[:, top] / eigval[top].clamp_min(1e-6).sqrt()).float().T


class RelationKey(nn.Module):
    """``normalise(W (h - c))`` of states at a prompt's last token: what a request asks."""

    def __init__(self, d_model: int, dim: int):
        super().__init__()
        self.register_buffer("center", torch.zeros(d_model))
        self.proj = nn.Linear(d_model, dim, bias=False)

    def forward(self, states: Tensor) -> Tensor:
        return nn.functional.normalize(self.proj(states - self.center), dim=-1)


class ScopeModel(nn.Module):
    """The learned embedding of hidden states plus its routing settings."""

    def __init__(self, config: ScopeConfig, d_model: int):
        super().__init__()
        self.config = config
        self.register_buffer("center", torch.zeros(d_model))
        self.proj = nn.Linear(d_model, config.dim, bias=False)
        if config.relation_threshold is not None:
            self.relation = RelationKey(d_model, config.dim)
        self.metadata: dict = {}  # how it was fitted (``extra`` of scope.json)

    @property
    def d_model(self) -> int:
        return self.center.shape[0]

    @property
    def has_relation(self) -> bool:
        return self.config.relation_threshold is not None

    def embed(self, states: Tensor) -> Tensor:
        """Unit-length embeddings of states ``(..., d_model)``."""
        return nn.functional.normalize(self.proj(states.float() - self.center), dim=-1)

    def embed_relation(self, states: Tensor) -> Tensor:
        """Unit-length relation embeddings of last-prompt-token states ``(..., d_model)``
        (width 0 without a relation key: every request asks every correction's question)."""
        if not self.has_relation:
            return states.new_zeros(*states.shape[:-1], 0)
        return self.relation(states.float())

    def related(self, asked: Tensor, relations: Tensor) -> Tensor | None:
        """``(queries, keys)``: whether each query's relation embedding ``asked`` reaches
        the relation threshold against each key's ``relations`` (None without a relation key)."""
        if not self.has_relation:
            return None
        return asked @ relations.to(asked.device).T >= self.config.relation_threshold

    def with_threshold(
        self, threshold: float, subject_threshold: float | None = None,
        count_thresholds: tuple[tuple[int, float], ...] = (),
    ) -> ScopeModel:
        """The same embedding under other thresholds (by default one at every count); a
        relation key and its threshold are kept."""
        update = {"threshold": threshold, "subject_threshold": subject_threshold,
                  "count_thresholds": tuple(count_thresholds)}
        return self._reconfigured(update, self.state_dict())

    def without_relation(self) -> ScopeModel:
        """The same scope with no relation key (the subject test alone)."""
        return self._reconfigured({"relation_threshold": None}, self._scope_state()).eval()

    def with_relation(self, relation: RelationKey, threshold: float) -> ScopeModel:
        """The same scope with a relation key that requests passing the subject test must
        also reach at ``threshold`` (a new fingerprint: keys made before lack it)."""
        state = {**self._scope_state(), **{f"relation.{k}": v for k, v in relation.state_dict().items()}}
        return self._reconfigured({"relation_threshold": threshold}, state).eval()

    def _scope_state(self) -> dict[str, Tensor]:
        """The weights without the relation key's."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("relation.")}

    def _reconfigured(self, update: dict, state: dict[str, Tensor]) -> ScopeModel:
        """A scope model with ``update`` applied to this one's config, holding ``state``."""
        other = ScopeModel(self.config.model_copy(update=update), self.d_model)
        other.load_state_dict(state)
        other.metadata = dict(self.metadata)
        return other

    @torch.no_grad()
    def fingerprint(self) -> str:
        """A hash of the embedding's weights: keys are only comparable under the same one."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        digest.update(str(self.config.layer).encode())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``scope.safetensors`` and ``scope.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  directory / "scope.safetensors")
        meta = {"format": SCOPE_FORMAT, "config": self.config.model_dump(), "d_model": self.d_model,
                "fingerprint": self.fingerprint(), "extra": extra or {}}
        (directory / "scope.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ScopeModel:
        directory = Path(directory)
        meta = read_metadata(directory, "scope.json", SCOPE_FORMAT, "scope model",
                             hint=" (train one with mend.scope.fit)")
        model = cls(ScopeConfig(**meta["config"]), meta["d_model"])
        model.load_state_dict(load_file(directory / "scope.safetensors"))
        model.metadata = meta.get("extra", {})
        return model.eval()
