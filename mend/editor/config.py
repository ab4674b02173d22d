"""Typed configuration of an editor network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EditorConfig(BaseModel):
    """How an editor is built. Saved next to its weights and checked on load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(1920, gt=0, description="rank of each residual block (capped at its width)")
    n_blocks: int = Field(2, ge=1, description="residual low-rank blocks per network")
    edit_lr_init: float = Field(
        1e-4, description="initial per-matrix edit learning rate (learned during meta-training)"
    )
    token_mode: Literal["all", "target"] = Field(
        "all", description="which tokens' factors are edited: all that reach the loss, or only scored ones"
    )
    share_by_shape: bool = Field(True, description="one network per distinct matrix shape")
    down_init: Literal["normal", "xavier"] = Field(
        "normal", description="init of each block's down-projection (MEND's code: normal)"
    )
    aggregation: Literal["sum", "least_squares", "scoped"] = Field(
        "sum",
        description="sum: MEND's summed rank-1 terms; least_squares: MALMEN's regularised solve; "
        "scoped: each request's summed terms, routed to the inputs in its scope (trained as sum)",
    )
    key_preconditioning: Literal["none", "covariance"] = Field(
        "none",
        description="covariance: multiply each u~ by (C/s + d I)^-1, C the second moment of the "
        "matrix's inputs on generic text, so edits act on directions unusual for ordinary inputs",
    )
    precond_damping: float = Field(0.1, gt=0, description="d above, relative to the mean eigenvalue s")
    norm_eps: float = 1e-7
    patterns: list[str] | None = Field(
        None, description="module-name regexes of the edited matrices; None = family default"
    )
