"""Training a scope model on edit records, as SERAC trains its scope classifier.

Positives are a correction's rephrases: they must score at least the threshold for
their own correction. Negatives are everything that must not: unrelated questions
(NQ), prompts about the same relation and another subject (CounterFact's
neighbourhood prompts) and the other corrections' rephrases. The base model is frozen;
only the embedding ``W`` learns, on states computed once.

Loss per batch of corrections (keys ``K``, scores = best-token cosines):

* contrastive: each rephrase's own key must out-score the batch's other keys
  (cross-entropy over keys at temperature ``temperature``);
* margins around the threshold: a rephrase's own score above ``threshold + margin``,
  every negative's score for every key, and every rephrase's score for another key,
  below ``threshold - margin``.

Afterwards :func:`calibrate` picks the threshold on held-out records: the lowest one
whose false-positive rate on the held-out negatives stays within a budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from mend.models.blocks import decoder_blocks
from mend.models.editable import EditableModel
from mend.scope.model import ScopeConfig, ScopeModel, whitening
from mend.scope.relation import RelationData, RelationReport, fit_relation
from mend.scope.scores import Padded, best_token_scores
from mend.scope.states import layer_states, subject_states
from mend.scope.subjects import gated, subject_tokens


@dataclass(frozen=True)
class ScopeExample:
    """One correction as a scope sees it: the prompt its key comes from, the subject
    the key sits on, and inputs that are in its scope."""

    prompt: str
    subject: str | None
    rephrases: tuple[str, ...]


@dataclass
class ScopeData:
    """Everything a scope model is trained or measured on, as states at one block."""

    keys: Tensor  # (n, d_model): each correction's state at its subject
    subjects: Tensor  # (n, variants, tokens): spellings of each correction's subject
    positives: Padded  # rephrases
    positive_owner: Tensor  # (p,) which correction each rephrase belongs to
    negatives: dict[str, Padded]  # named sets of inputs that belong to no correction
    relation_keys: Tensor | None = None  # (n, d_model): each correction's state at its prompt's last token

    def related(self, scope: ScopeModel, queries: Padded) -> Tensor | None:
        """``(queries, n)``: whether each query asks each correction's question (None when
        ``scope`` has no relation key)."""
        if not scope.has_relation:
            return None
        if self.relation_keys is None:
            raise ValueError("this scope model has a relation key but the data holds no relation keys")
        return scope.related(scope.embed_relation(queries.last()), scope.embed_relation(self.relation_keys))


def scope_data(
    model: EditableModel,
    examples: Sequence[ScopeExample],
    negatives: dict[str, Sequence[str]],
    layers: Sequence[int],
    skip_first: int = 1,
) -> dict[int, ScopeData]:
    """The states of ``examples`` and ``negatives`` after each of ``layers`` (one pass)."""
    prompts = [e.prompt for e in examples]
    rephrases = [r for e in examples for r in e.rephrases]
    owner = torch.tensor([i for i, e in enumerate(examples) for _ in e.rephrases], dtype=torch.long)
    names = list(negatives)
    texts = prompts + rephrases + [t for n in names for t in negatives[n]]
    states = layer_states(model, texts, layers)
    subjects = subject_tokens(model.tokenizer, [e.subject for e in examples])
    out = {}
    for layer in layers:
        rows = states[layer]
        keys = subject_states(prompts, rows[: len(prompts)], [e.subject for e in examples])
        start = len(prompts) + len(rephrases)
        negative_sets = {}
        for name in names:
            stop = start + len(negatives[name])
            negative_sets[name] = Padded.of(rows[start:stop], skip_first)
            start = stop
        out[layer] = ScopeData(keys, subjects, Padded.of(rows[len(prompts) : len(prompts) + len(rephrases)],
                                                         skip_first), owner, negative_sets,
                               torch.stack([rows[i].states[-1] for i in range(len(prompts))]))
    return out


def init_scope(config: ScopeConfig, data: ScopeData) -> ScopeModel:
    """Centre on the states' mean and start ``W`` as a whitening projection onto their
    leading principal directions, so that raw cosines start out meaningful."""
    rows = torch.cat([data.positives.states[data.positives.usable]]
                     + [n.states[n.usable] for n in data.negatives.values()])
    scope = ScopeModel(config, rows.shape[1])
    mean, projection = whitening(rows, config.dim)
    with torch.no_grad():
        scope.center.copy_(mean)
        scope.proj.weight.copy_(projection)
    return scope


@dataclass
class FitReport:
    steps: int
    final_loss: float
    layer: int


def fit_scope(
    config: ScopeConfig,
    data: ScopeData,
    *,
    steps: int = 1000,
    batch: int = 128,
    negatives_per_step: int = 256,
    lr: float = 1e-3,
    margin: float = 0.1,
    temperature: float = 0.1,
    seed: int = 0,
) -> tuple[ScopeModel, FitReport]:
    """Train a scope model on ``data`` (see the module docstring); the threshold is
    ``config.threshold`` until :func:`calibrate` sets it."""
    generator = torch.Generator().manual_seed(seed)
    scope = init_scope(config, data)
    optimiser = torch.optim.Adam(scope.proj.parameters(), lr=lr)
    negative_pool = Padded.cat(list(data.negatives.values())) if data.negatives else None
    # Each step draws corrections and one of each one's rephrases.
    by_owner: dict[int, list[int]] = {}
    for index, owner in enumerate(data.positive_owner.tolist()):
        by_owner.setdefault(owner, []).append(index)
    owners = torch.tensor(sorted(by_owner))
    threshold = config.threshold
    loss = torch.tensor(0.0)
    for _ in range(steps):
        pick = owners[torch.randperm(len(owners), generator=generator)[:batch]]
        rephrase = torch.tensor([by_owner[int(o)][int(torch.randint(len(by_owner[int(o)]), (1,), generator=generator))]
                                 for o in pick])
        keys = scope.embed(data.keys[pick])  # (B, dim)
        pos = best_token_scores(scope, keys, data.positives.take(rephrase), chunk=len(rephrase))  # (B, B)
        own = pos.diagonal()
        others = pos.masked_fill(torch.eye(len(pick), dtype=torch.bool), -2.0)
        loss = nn.functional.cross_entropy(pos / temperature, torch.arange(len(pick)))
        loss = loss + torch.relu(threshold + margin - own).mean()
        loss = loss + torch.relu(others - (threshold - margin)).square().sum(1).mean()
        if negative_pool is not None:
            drawn = torch.randint(len(negative_pool), (negatives_per_step,), generator=generator)
            neg = best_token_scores(scope, keys, negative_pool.take(drawn), chunk=negatives_per_step)  # (N, B)
            loss = loss + torch.relu(neg - (threshold - margin)).square().sum(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return scope.eval(), FitReport(steps, float(loss.detach()), config.layer)


@dataclass
class ScopeQuality:
    """How a scope separates in-scope from out-of-scope inputs among ``n_keys`` corrections."""

    threshold: float
    recall: float  # rephrases whose own correction switches on
    top1: float  # rephrases whose own correction scores highest
    false_positives: dict[str, float]  # per negative set: inputs that switch any correction on
    n_keys: int
    subject_threshold: float | None = None
    relation_threshold: float | None = None


@torch.no_grad()
def measure(scope: ScopeModel, data: ScopeData) -> ScopeQuality:
    """Recall and false-positive rates of ``scope`` over every correction of ``data``,
    routed as :mod:`mend.scope.routing` routes (threshold, subject test and its relation
    test, ``max_active``)."""
    config = scope.config
    keys = scope.embed(data.keys)
    threshold = config.threshold_at(len(keys))

    def passing(queries: Padded) -> tuple[Tensor, Tensor]:
        sims = best_token_scores(scope, keys, queries)
        return sims, gated(sims, queries.ids, data.subjects, threshold, config.subject_threshold,
                           related=data.related(scope, queries))

    sims, passes = passing(data.positives)
    owner = data.positive_owner.unsqueeze(1)
    own = sims.gather(1, owner).squeeze(1)
    top1 = (sims.argmax(1) == data.positive_owner).float().mean().item() if len(sims) else 0.0
    # Switched on: passing and among the ``max_active`` best passing, as routing does.
    outranked = ((sims > own.unsqueeze(1)) & passes).sum(1)
    recall = (passes.gather(1, owner).squeeze(1) & (outranked < config.max_active)).float().mean().item()
    false_positives = {name: passing(neg)[1].any(1).float().mean().item() for name, neg in data.negatives.items()}
    return ScopeQuality(threshold, recall, top1, false_positives, len(keys), config.subject_threshold,
                        config.relation_threshold)


@torch.no_grad()
def calibrate(
    scope: ScopeModel, data: ScopeData, max_false_positive_rate: float | dict[str, float], subject_test: bool = True,
    subject_floor: float = 0.3,
) -> ScopeModel:
    """``scope`` with thresholds at which no negative set of ``data`` switches a correction
    on for more than its budget of its inputs (one budget for all sets, or one per name).

    Without the subject test: the lowest ``threshold`` within the budget. With it, the
    threshold alone takes half of each budget, and ``subject_threshold`` (not below
    ``subject_floor``) the lowest value at which the inputs that also contain a
    correction's subject keep the total within the budget."""
    keys = scope.embed(data.keys)
    share = _learned_share(subject_test)
    scored = {name: best_token_scores(scope, keys, neg) for name, neg in data.negatives.items()}
    threshold = -1.0
    for name, sims in scored.items():
        if len(sims):
            threshold = max(threshold, _lowest_within(sims.amax(1), share * _budget(max_false_positive_rate, name)))
    threshold = min(threshold, 1.0)
    if not subject_test:
        return scope.with_threshold(threshold)
    subject_threshold = subject_floor
    for name, sims in scored.items():
        if not len(sims):
            continue
        strong = sims.amax(1) >= threshold
        # Each input's best score among the corrections whose subject it contains.
        named = gated(sims, data.negatives[name].ids, data.subjects, 2.0, subject_floor, max_checks=len(keys))
        best_named = sims.masked_fill(~named, -2.0).amax(1).masked_fill(strong, -2.0)
        left = _budget(max_false_positive_rate, name) - strong.float().mean().item()
        subject_threshold = max(subject_threshold, _lowest_within(best_named, max(left, 0.0)))
    return scope.with_threshold(threshold, min(subject_threshold, threshold))


COUNTS = (1_000, 3_000, 10_000, 30_000, 100_000)


@torch.no_grad()
def thresholds_by_count(
    scope: ScopeModel,
    data: ScopeData,
    pool: Tensor,
    max_false_positive_rate: float | dict[str, float],
    counts: Sequence[int] = COUNTS,
) -> ScopeModel:
    """``scope``, calibrated on ``data`` by :func:`calibrate`, with its threshold raised
    for more stored corrections than ``data`` holds (``ScopeConfig.count_thresholds``).

    An unrelated input is switched on by its best-scoring key, and the best of more keys
    scores higher by chance alone. Drawing ``n`` stored corrections like the keys of
    ``data`` and ``pool`` (``(m, d_model)`` states of other training corrections' keys),
    input ``i`` switches none on with probability ``(1 - p_i(t))^n``, ``p_i(t)`` the share
    of those keys it scores at least ``t``. Per count, the threshold is the lowest at which
    the expected share of each negative set switched on stays within the part of its
    budget :func:`calibrate` gave the learned score, and never below a smaller count's.
    Counts beyond ten times the keys at hand are left out: drawn from so few keys, the
    estimate only sees each input's few best scores (routing keeps the last threshold)."""
    share = _learned_share(scope.config.subject_threshold is not None)
    keys = scope.embed(torch.cat([data.keys, pool.to(data.keys.dtype)]))
    scored = {name: best_token_scores(scope, keys, neg).double().sort(1).values
              for name, neg in data.negatives.items() if len(neg)}
    points, threshold = [(len(data.keys), scope.config.threshold)], scope.config.threshold
    for count in sorted(c for c in counts if len(data.keys) < c <= 10 * len(keys)):
        for name, ranked in scored.items():
            threshold = max(threshold, _lowest_expected_within(ranked, count, share * _budget(max_false_positive_rate, name)))
        points.append((count, min(threshold, 1.0)))
    config = scope.config
    return scope.with_threshold(config.threshold, config.subject_threshold, tuple(points))


def _lowest_expected_within(ranked: Tensor, count: int, rate: float, steps: int = 40) -> float:
    """The lowest threshold at which inputs whose scores against a pool of keys are
    ``ranked`` (``(inputs, keys)``, each row ascending) would switch on at most ``rate``
    of them, in expectation, against ``count`` keys drawn from that pool."""
    n_keys = ranked.shape[1]

    def expected_rate(threshold: float) -> float:
        at_least = n_keys - torch.searchsorted(ranked, torch.full((len(ranked), 1), threshold, dtype=ranked.dtype))
        p = at_least.squeeze(1).double() / n_keys
        return float((1 - torch.exp(count * torch.log1p(-p.clamp(max=1 - 1e-12)))).mean())

    low, high = -1.0, 1.0 + 1e-4
    for _ in range(steps):  # the rate falls as the threshold rises
        middle = (low + high) / 2
        low, high = (middle, high) if expected_rate(middle) > rate else (low, middle)
    return high


def _budget(max_false_positive_rate: float | dict[str, float], name: str) -> float:
    rate = max_false_positive_rate
    return float(rate) if isinstance(rate, float | int) else rate[name]


def _learned_share(subject_test: bool) -> float:
    """The part of each false-positive budget the learned score alone may use: with the
    subject test, the requests naming a correction's subject take the rest."""
    return 0.5 if subject_test else 1.0


def _lowest_within(scores: Tensor, rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of ``scores`` reach it."""
    allowed = int(rate * len(scores))
    ranked = scores.sort(descending=True).values
    # Above the (allowed+1)-th highest score at most ``allowed`` inputs pass.
    return float(ranked[min(allowed, len(ranked) - 1)]) + 1e-4


def examples_of(records) -> list[ScopeExample]:
    """Edit records as scope examples (their rephrases are in scope)."""
    return [ScopeExample(r.prompt, r.subject, tuple(r.rephrases)) for r in records]


def unrelated_inputs(records) -> list[str]:
    """The records' locality prompts: inputs that must stay outside every correction's scope."""
    return [p.prompt for r in records for p in r.locality]


@dataclass
class LayerChoice:
    """A scope model fitted at each candidate block, and which one was kept."""

    scope: ScopeModel
    layer: int
    per_layer: dict[int, ScopeQuality]  # measured on the held-out part of the training data (no relation key)
    relation: RelationReport | None = None  # how the relation key was fitted, if it was

    def summary(self) -> dict:
        """JSON-ready: the kept block, its thresholds, and what each candidate measured."""
        config = self.scope.config
        return {
            "layer": self.layer, "threshold": config.threshold, "relation_threshold": config.relation_threshold,
            "count_thresholds": [list(pair) for pair in config.count_thresholds],
            "layer_choice": {str(layer): {"recall": q.recall, "top1": q.top1, "false_positives": q.false_positives,
                                          "threshold": q.threshold} for layer, q in self.per_layer.items()},
            "relation": asdict(self.relation) if self.relation is not None else None,
        }


def training_sets(
    model: EditableModel, train: dict[str, Sequence], held_out: dict[str, Sequence], layers: Sequence[int]
) -> tuple[dict[int, ScopeData], dict[int, ScopeData]]:
    """The states of ``train`` and of ``held_out`` (named sets of edit records) after each of
    ``layers``: what a scope model is fitted on, and what calibrates it."""
    def states(sets: dict[str, Sequence]) -> dict[int, ScopeData]:
        return scope_data(model, [e for records in sets.values() for e in examples_of(records)],
                          {name: unrelated_inputs(records) for name, records in sets.items()}, layers)

    return states(train), states(held_out)


def fit_choosing_layer(
    model: EditableModel,
    train: dict[str, Sequence],
    held_out: dict[str, Sequence],
    layers: Sequence[int],
    *,
    dim: int = 128,
    max_false_positive_rate: float | dict[str, float] = 0.01,
    steps: int = 1000,
    seed: int = 0,
    subject_test: bool = True,
    relation_test: bool = True,
) -> LayerChoice:
    """Fit a scope model at each of ``layers`` on ``train`` (named sets of edit records:
    rephrases in scope, locality prompts out of scope), calibrate each one's threshold on
    ``held_out`` (also training data) at ``max_false_positive_rate`` (with the subject
    test unless ``subject_test`` is False) and raise it for more stored corrections
    (:func:`thresholds_by_count`), and keep the block whose calibrated recall there is
    highest; with the subject test and ``relation_test``, give the kept one a relation
    key fitted on the same records (:mod:`mend.scope.relation`)."""
    n_blocks = len(decoder_blocks(model.model))
    outside = [layer for layer in layers if not 0 <= layer < n_blocks]
    if outside:
        raise ValueError(f"scope layers {outside} are not blocks of this model: it has {n_blocks} (0 to {n_blocks - 1})")
    fit_sets, check_sets = training_sets(model, train, held_out, layers)
    fitted, quality = {}, {}
    for layer in layers:
        config = ScopeConfig(layer=layer, dim=dim, threshold=0.5)
        scope, _ = fit_scope(config, fit_sets[layer], steps=steps, seed=seed)
        scope = calibrate(scope, check_sets[layer], max_false_positive_rate, subject_test=subject_test)
        # The keys trained on stand in for the many more corrections a deployment stores.
        scope = thresholds_by_count(scope, check_sets[layer], fit_sets[layer].keys, max_false_positive_rate)
        fitted[layer], quality[layer] = scope, measure(scope, check_sets[layer])
    best = max(layers, key=lambda layer: (quality[layer].recall, quality[layer].top1))
    if not (subject_test and relation_test):
        return LayerChoice(fitted[best], best, quality)
    asked = {name: [e for records in sets.values() for e in examples_of(records)]
             for name, sets in (("train", train), ("held_out", held_out))}
    relation_train = RelationData.of(model, asked["train"], best, seed=seed)
    if not len(relation_train.others):  # no record names its subject: the subject test never fires either
        return LayerChoice(fitted[best], best, quality)
    scope, report = fit_relation(fitted[best], relation_train, RelationData.of(model, asked["held_out"], best,
                                                                               seed=seed + 1), seed=seed)
    return LayerChoice(scope, best, quality, report)
