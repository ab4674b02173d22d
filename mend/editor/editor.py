"""The MEND editor: turns one batch's gradient factors into low-rank weight changes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mend.aggregations import CHANGES, Change
from mend.aggregations.base import EditSource
from mend.capture import Capture, Factors, capture_factors
from mend.deltas import LowRankDelta
from mend.edit import Edit, EditRequest
from mend.editor.config import EditorConfig
from mend.editor.network import FactorEditor
from mend.metadata import read_metadata
from mend.models.batching import length_chunks
from mend.models.editable import EditableModel
from mend.models.fingerprints import recorded_fingerprint
from mend.models.targets import EditTarget
from mend.scope.model import ScopeModel

CAPTURE_CHUNK = 32  # edit requests per forward/backward pass when computing an edit

EDITOR_FORMAT = "mend-editor/1"
SCOPE_DIR = "scope"  # an editor's scope model, when it has one, lies beside its weights


class IncompatibleModelError(ValueError):
    """The editor was built for a different model than the one it is used on."""


class Editor(nn.Module):
    """Editor networks for a set of target matrices, plus one learned edit lr each.

    Update rule (sign chosen deliberately): ``W~ = W - lr * sum_i delta~_i u~_i^T``,
    the paper's gradient-descent sign (MEND §3.1, Alg. 2). With ``lr > 0`` an untrained,
    identity-initialised editor therefore takes a (normalised) fine-tuning step that
    lowers the edit loss. The original code and EasyEdit add ``+lr * ...`` with a
    positive initial lr, so their untrained editor ascends the loss until training flips
    the lrs' signs.
    """

    def __init__(
        self,
        config: EditorConfig,
        targets: Sequence[EditTarget],
        base_model: dict | None = None,
    ):
        super().__init__()
        if not targets:
            raise ValueError("an editor needs at least one target matrix")
        self.config = config
        self.targets = list(targets)
        self.base_model = dict(base_model or {})
        self.metadata: dict = {}  # what the training run recorded (editor.json "extra")
        # Decides which requests a scoped edit's corrections apply to (mend.scope); trained
        # apart from the networks and saved beside them.
        self.scope: ScopeModel | None = None
        # Group targets: one network per shape (or per matrix), mode = index in group.
        groups: dict[str, list[EditTarget]] = {}
        for target in self.targets:
            key = target.shape_key if config.share_by_shape else target.module_name.replace(".", "/")
            groups.setdefault(key, []).append(target)
        self._group_of = {t.module_name: k for k, ts in groups.items() for t in ts}
        self._mode_of = {t.module_name: i for ts in groups.values() for i, t in enumerate(ts)}
        self.nets = nn.ModuleDict(
            {
                key: FactorEditor(
                    ts[0].d_in,
                    ts[0].d_out,
                    n_modes=len(ts),
                    rank=config.rank,
                    n_blocks=config.n_blocks,
                    down_init=config.down_init,
                    norm_eps=config.norm_eps,
                )
                for key, ts in groups.items()
            }
        )
        self.edit_lrs = nn.Parameter(torch.full((len(self.targets),), config.edit_lr_init))
        self._lr_index = {t.module_name: i for i, t in enumerate(self.targets)}
        if config.aggregation == "least_squares":
            # log of each matrix's ridge regulariser (MALMEN initialises lambda at 1).
            self.log_lambdas = nn.Parameter(torch.zeros(len(self.targets)))
        if config.key_preconditioning == "covariance":
            # Identity until fit_key_covariance() has seen generic text; saved with the editor.
            for i, target in enumerate(self.targets):
                self.register_buffer(f"key_precond_{i}", torch.eye(target.d_in))
            self.register_buffer("key_precond_fitted", torch.zeros((), dtype=torch.bool))

    def __setattr__(self, name, value):
        if name == "scope":
            # Not a submodule: the scope model is trained apart and saved beside the
            # editor's weights, not inside its state dict.
            self.__dict__[name] = value
            return
        super().__setattr__(name, value)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def for_model(cls, model: EditableModel, config: EditorConfig | None = None) -> Editor:
        """An untrained (identity) editor for ``model``'s target matrices."""
        config = config or EditorConfig()
        if config.patterns is not None:
            model = model.retargeted(config.patterns)
        return cls(config, model.targets, base_model_info(model))

    def scope_for(self, aggregation: str | None) -> ScopeModel | None:
        """The scope model an edit under ``aggregation`` (None: the editor's own) routes
        by, or None when that edit is not scoped or no scope model is attached."""
        return self.scope if (aggregation or self.config.aggregation) == "scoped" else None

    def attach_scope(self, scope: ScopeModel) -> Editor:
        """Edit ``scoped`` from now on, ``scope`` deciding which requests each correction
        applies to (:mod:`mend.aggregations.scoped`); saved with the editor."""
        if self.config.aggregation not in ("sum", "scoped"):
            raise ValueError(f"scoped edits keep each request's summed terms; this editor aggregates by "
                             f"{self.config.aggregation}")
        self.config = self.config.model_copy(update={"aggregation": "scoped"})
        self.scope = scope
        return self

    def editor_parameters(self) -> list[nn.Parameter]:
        """Network weights (trained at the editor lr)."""
        return [p for n, p in self.named_parameters() if n not in ("edit_lrs", "log_lambdas")]

    def param_groups(self, lr: float, lr_edit_lrs: float, lr_lambdas: float) -> list[dict]:
        """Optimiser groups: networks, edit lrs and (least squares) log-regularisers each
        at their own rate; scalars on a log or 1e-4 scale need rates of their own to move."""
        groups = [
            {"params": self.editor_parameters(), "lr": lr},
            {"params": [self.edit_lrs], "lr": lr_edit_lrs},
        ]
        if self.least_squares:
            groups.append({"params": [self.log_lambdas], "lr": lr_lambdas})
        return groups

    @torch.no_grad()
    def scale_regularisers(self, factor: float) -> None:
        """Multiply every matrix's least-squares regulariser by ``factor``, after training:
        above 1 unrelated outputs move less and edits land less often, below 1 the reverse
        (the trade-off is measured in ``bench/results/edits_tradeoff.json``)."""
        if not self.least_squares:
            raise ValueError("only a least-squares editor has regularisers to scale")
        if not factor > 0:
            raise ValueError(f"regulariser scale must be positive, got {factor}")
        self.log_lambdas += math.log(factor)

    @contextmanager
    def regularisers_scaled(self, factor: float) -> Iterator[Editor]:
        """:meth:`scale_regularisers` for the enclosed block only (a no-op at 1, for any
        editor); the stored regularisers come back exactly afterwards."""
        if factor == 1:
            yield self
            return
        saved = self.log_lambdas.detach().clone() if self.least_squares else None
        self.scale_regularisers(factor)  # refuses summed editors and non-positive factors
        try:
            yield self
        finally:
            with torch.no_grad():
                self.log_lambdas.copy_(saved)

    @property
    def least_squares(self) -> bool:
        return self.config.aggregation == "least_squares"

    # -- the transform ----------------------------------------------------------------
    def key_precond(self, name: str) -> torch.Tensor | None:
        """Matrix ``name``'s key preconditioner (None without key preconditioning)."""
        if self.config.key_preconditioning != "covariance":
            return None
        return getattr(self, f"key_precond_{self._lr_index[name]}")

    def regulariser(self, name: str) -> torch.Tensor:
        """Matrix ``name``'s learned least-squares regulariser."""
        return self.log_lambdas[self._lr_index[name]].exp()

    def change_from(
        self,
        factors: dict[str, Factors],
        update_stats: bool = False,
        source: EditSource | None = None,
        aggregation: str | None = None,
    ) -> Change:
        """Captured factors as a change, aggregated as ``aggregation`` says (default: the
        editor's own; see :mod:`mend.aggregations`). Differentiable in the editor."""
        name = aggregation or self.config.aggregation
        if name not in CHANGES:
            raise ValueError(f"unknown aggregation {name!r}; known: {', '.join(CHANGES)}")
        return CHANGES[name].from_editor(self, factors, update_stats, source)

    def deltas_from(self, factors: dict[str, Factors], update_stats: bool = False) -> dict[str, LowRankDelta]:
        """The per-matrix low-rank changes meta-training scores (differentiable)."""
        return self.change_from(factors, update_stats).deltas()

    def terms(self, factors: dict[str, Factors], update_stats: bool = False) -> dict[str, LowRankDelta]:
        """The editor networks on every row; one rank-1 term ``-lr delta~ u~^T`` per row.

        Rows of all matrices that share a network go through it in one batch.
        """
        by_group: dict[str, list[str]] = {}
        for name in factors:
            by_group.setdefault(self._group_of[name], []).append(name)
        deltas: dict[str, LowRankDelta] = {}
        for key, names in by_group.items():
            net = self.nets[key]
            parts = [factors[n] for n in names]
            u = torch.cat([p.u for p in parts])
            delta = torch.cat([p.delta for p in parts])
            mode = torch.cat(
                [torch.full((p.rows,), self._mode_of[n], dtype=torch.long) for n, p in zip(names, parts, strict=True)]
            ).to(u.device)
            u_t, delta_t = net(u, delta, mode, update_stats=update_stats)
            start = 0
            for name, part in zip(names, parts, strict=True):
                stop = start + part.rows
                lr = self.edit_lrs[self._lr_index[name]]
                u_rows = u_t[start:stop]
                precond = self.key_precond(name)
                if precond is not None:
                    u_rows = u_rows @ precond
                deltas[name] = LowRankDelta(u_rows, -lr * delta_t[start:stop], part.example)
                start = stop
        return deltas

    def _capture(self, model: EditableModel, prompts, targets, chunk: int = CAPTURE_CHUNK) -> Capture:
        # In chunks: one pass over a thousand edits would hold a thousand sequences'
        # activations and vocabulary logits at once (~20 GB for SmolLM2). Chunks of
        # similar length: padding to the longest of a chunk is computed for nothing.
        prompts, targets = list(prompts), list(targets)
        chunks = length_chunks([len(p) + len(t) for p, t in zip(prompts, targets, strict=True)], chunk)
        parts = []
        for index in chunks:
            batch = model.task.batch([prompts[i] for i in index], [targets[i] for i in index]).to(model.device)
            parts.append(capture_factors(model.model, model.task, self.targets, batch, self.config.token_mode))
        return Capture.cat(parts, chunks)

    def edit(
        self,
        model: EditableModel,
        prompts: Sequence[str],
        targets: Sequence[str],
        request_ids: Sequence[str] | None = None,
        *,
        strict: bool = True,
        passes: int = 1,
        aggregation: str | None = None,
        subjects: Sequence[str | None] | None = None,
    ) -> Edit:
        """Compute the edit that makes ``targets`` the model's outputs for ``prompts``.

        All pairs are edited simultaneously (one batch). The returned edit is not yet
        applied: call ``edit.apply()``.

        ``passes > 1`` captures the requests again on the model with the edit so far
        applied, and adds what the editor makes of that as further rows of the same
        requests (:meth:`Edit.with_pass`): each pass asks for what the earlier ones left
        undone, after the edits' interference. With least squares and many edits this
        buys edit success at equal locality; each pass costs one more capture. (The
        corrections queue runs its passes itself, each on the model as it would publish
        it: :meth:`Edit.with_pass` adds one.)

        ``aggregation`` overrides the editor's own (e.g. ``"scoped"`` for a summed editor
        with a scope model); ``subjects`` name each prompt's subject, where scoped edits
        anchor their scope keys (the last prompt token when absent).
        """
        self.check_model(model, strict=strict)
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        ids = list(request_ids) if request_ids is not None else [""] * len(prompts)
        requests = [EditRequest(p, t, i) for p, t, i in zip(prompts, targets, ids, strict=True)]
        # The weights' fingerprint, once: passes hook changes in but never touch weights.
        info = base_model_info(model) if not self.base_model else self.base_model
        source = EditSource(model, [r.prompt for r in requests], list(subjects or [None] * len(requests)))
        edit = self._edit_once(model, requests, info, source, aggregation)
        for _ in range(passes - 1):
            with edit.applied(model):
                further = self._edit_once(model, requests, info, source, aggregation)
            edit = edit.with_pass(further)
        return edit

    def _edit_once(self, model, requests: list[EditRequest], info: dict, source: EditSource, aggregation) -> Edit:
        capture = self._capture(model, source.prompts, [r.target for r in requests])
        with torch.no_grad():
            change = self.change_from(capture.factors, source=source, aggregation=aggregation).detach()
        return Edit(change, model.layouts, requests, info, model)

    @torch.no_grad()
    def fit_normalization(
        self, model: EditableModel, prompts: Sequence[str], targets: Sequence[str]
    ) -> None:
        """Fold the factors of some edit examples into the normalisation statistics."""
        capture = self._capture(model, prompts, targets)
        for key, net in self.nets.items():
            names = [n for n in capture.factors if self._group_of[n] == key]
            if names:
                net.norm.update(
                    torch.cat(
                        [torch.cat([capture.factors[n].u, capture.factors[n].delta], -1) for n in names]
                    ).float()
                )

    @torch.no_grad()
    def fit_key_covariance(self, model: EditableModel, texts: Sequence[str], batch_size: int = 16) -> None:
        """Estimate each edited matrix's input second moment ``C`` on generic ``texts`` and
        store the preconditioner ``(1 + d) (C / s + d I)^-1`` (``s`` = mean eigenvalue).

        The preconditioner shrinks directions every ordinary input has (as MEMIT's key
        covariance does) and is the identity for isotropic inputs.
        """
        if self.config.key_preconditioning != "covariance":
            raise ValueError("this editor is configured without key preconditioning")
        from mend.capture import record_layer_io

        sums = {t.module_name: torch.zeros(t.d_in, t.d_in, dtype=torch.float64) for t in self.targets}
        count = 0
        tok = model.tokenizer
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start : start + batch_size]), return_tensors="pt", padding=True).to(model.device)
            mask = enc["attention_mask"].bool()
            with torch.no_grad(), record_layer_io(model.model, list(sums)) as records:
                model.model(**enc)
            for name, (x, _) in records.items():
                rows = x.detach()[mask].double().cpu()
                sums[name] += rows.T @ rows
            count += int(mask.sum())
        damping = self.config.precond_damping
        for i, target in enumerate(self.targets):
            second = sums[target.module_name] / max(count, 1)
            scale = second.trace() / target.d_in
            eye = torch.eye(target.d_in, dtype=torch.float64)
            precond = (1 + damping) * torch.linalg.inv(second / scale + damping * eye)
            getattr(self, f"key_precond_{i}").copy_(precond.float())
        self.key_precond_fitted.fill_(True)

    # -- compatibility ----------------------------------------------------------------
    def check_model(self, model: EditableModel, strict: bool = True) -> None:
        """Refuse a model whose matrices differ from the ones this editor was built for."""
        have = {t.module_name: (t.d_in, t.d_out) for t in model.targets}
        problems = []
        for t in self.targets:
            if t.module_name not in have:
                problems.append(f"missing matrix {t.module_name}")
            elif have[t.module_name] != (t.d_in, t.d_out):
                problems.append(
                    f"{t.module_name} is {have[t.module_name]} (in, out), editor expects {(t.d_in, t.d_out)}"
                )
        if problems:
            raise IncompatibleModelError(
                f"editor built for {self.base_model.get('name', '?')!r} does not fit model "
                f"{model.name!r}: " + "; ".join(problems)
            )
        if strict and not model.matches(self.base_model):
            recorded = recorded_fingerprint(self.base_model)
            raise IncompatibleModelError(
                f"editor was trained on base model {self.base_model.get('name')!r} (fingerprint "
                f"{recorded}); this model {model.name!r} has weights fingerprint "
                f"{model.weights_fingerprint()}. Its weights differ. Pass strict=False to use the editor anyway."
            )

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``editor.safetensors`` (weights + normalisation stats) and ``editor.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, directory / "editor.safetensors")
        meta = {
            "format": EDITOR_FORMAT,
            "config": self.config.model_dump(),
            "base_model": self.base_model,
            "targets": [
                {"module_name": t.module_name, "d_in": t.d_in, "d_out": t.d_out, "layout": t.layout}
                for t in self.targets
            ],
            "extra": extra or {},
        }
        (directory / "editor.json").write_text(json.dumps(meta, indent=2))
        if self.scope is not None:
            self.scope.save(directory / SCOPE_DIR)
        return directory

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Editor:
        """Load an editor written by :meth:`save` (no pickle involved)."""
        directory = Path(directory)
        meta = read_metadata(directory, "editor.json", EDITOR_FORMAT, "editor")
        targets = [EditTarget(**t) for t in meta["targets"]]
        editor = cls(EditorConfig(**meta["config"]), targets, meta["base_model"])
        state = load_file(directory / "editor.safetensors", device=str(map_location))
        editor.load_state_dict(state)
        editor.metadata = meta.get("extra", {})
        if (directory / SCOPE_DIR / "scope.json").exists():
            editor.scope = ScopeModel.load(directory / SCOPE_DIR)
        return editor.to(map_location)


def base_model_info(model: EditableModel) -> dict:
    """What an editor or edit records about the model it was made for."""
    return {
        "name": model.name,
        "source": model.source,
        "kind": model.kind,
        "model_type": model.model.config.model_type,
        "weights_fingerprint": model.weights_fingerprint(),
        # The target-set fingerprint records carried before; kept so they still compare.
        "fingerprint": model.targets_fingerprint(),
    }
