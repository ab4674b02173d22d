"""Hyper-parameters of the MEMIT and AlphaEdit baselines."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ValueConfig(BaseModel):
    """MEMIT's per-fact value optimisation (``compute_z``): an additive change ``delta`` of
    the residual stream after the last edited block, at the subject's last token."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(20, ge=1, description="passes per fact (MEMIT's v_num_grad_steps; the last only checks the loss)")
    lr: float = Field(0.5, gt=0, description="Adam learning rate")
    kl_factor: float = Field(0.0625, ge=0, description="weight of the KL term on '{subject} is a' prompts")
    weight_decay: float = Field(0.5, ge=0, description="weight of |delta| / |h|^2 (h: the unedited state)")
    clamp_norm_factor: float = Field(0.75, gt=0, description="|delta| is clamped to this share of |h|")
    stop_loss: float = Field(0.05, ge=0, description="a fact stops once its loss is below this (MEMIT's 5e-2)")
    batch_size: int = Field(32, ge=1, description="facts optimised together (each keeps its own delta)")


class SubjectEditConfig(BaseModel):
    """What MEMIT and AlphaEdit share: the edited blocks, C's sample and the values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: list[int] | None = Field(
        None, description="0-based blocks whose MLP output projection is edited, in order; the last one "
        "holds the values. None: blocks 4-8 of a 30-block model, scaled to the model's depth")
    covariance_tokens: int = Field(200_000, gt=0, description="at most this many generic-text tokens for C")
    values: ValueConfig = Field(default_factory=ValueConfig)


class MemitConfig(SubjectEditConfig):
    """MEMIT: each block's change solves a least-squares problem regularised by C."""

    lam: float = Field(10_000.0, gt=0, description="lambda in (lambda C + K K^T): weight of the generic-text "
                       "second moment C (a per-token mean) against the edits' keys; the default was chosen "
                       "for locality on SmolLM2 (bench.edits_scaling), smaller values edit more and keep less")


class AlphaEditConfig(SubjectEditConfig):
    """MEMIT's keys and values; the change is projected onto C's null space."""

    nullspace_threshold: float = Field(
        1e-2, gt=0, description="eigenvalues of C below this span the null space the change may use")
    l2: float = Field(10.0, gt=0, description="ridge term of AlphaEdit's solve")
