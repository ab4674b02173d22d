"""Build a MEMIT or AlphaEdit method from a name, generic-text files and ``key=value``
settings: what ``mend eval --method memit|alphaedit`` runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mend.baselines.alphaedit import AlphaEditMethod
from mend.baselines.config import AlphaEditConfig, MemitConfig
from mend.baselines.covariance import SecondMoments, corpus_texts
from mend.baselines.memit import MemitMethod
from mend.baselines.spread import SubjectEdit
from mend.baselines.values import ValueStore
from mend.overrides import apply_overrides

BASELINES = {"memit": (MemitMethod, MemitConfig), "alphaedit": (AlphaEditMethod, AlphaEditConfig)}


def baseline_method(
    name: str,
    covariance_data: Sequence[Path],
    settings: Mapping[str, Any] | None = None,
    value_cache: Path | None = None,
) -> SubjectEdit:
    """``name`` (memit | alphaedit) configured by ``settings`` (dotted keys of its config,
    e.g. ``{"lam": 3000, "values.steps": 10}``), with ``C`` from the texts of the dataset
    files ``covariance_data`` (any supported format; WikiBio passages are the intended
    generic text) and values cached in ``value_cache`` (safetensors) when given."""
    from mend.data import load_dataset

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}")
    if not covariance_data:
        raise ValueError(f"{name} needs generic text for its key covariance (e.g. a WikiBio file)")
    method_cls, config_cls = BASELINES[name]
    config = config_cls.model_validate(apply_overrides({}, dict(settings or {})))
    texts = [text for path in covariance_data for text in corpus_texts(load_dataset(path).records)]
    return method_cls(config=config, moments=SecondMoments(texts, max_tokens=config.covariance_tokens),
                      store=ValueStore(value_cache))
