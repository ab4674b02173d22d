"""``key=value`` overrides of nested configuration, the one way every command line sets them.

    >>> parse_overrides(["train.max_minutes=30", "lr=3e-4", "editor.patterns=[a, b]"])
    {'train.max_minutes': 30, 'lr': 0.0003, 'editor.patterns': ['a', 'b']}
    >>> apply_overrides({"train": {"lr": 1}}, {"train.lr": 2, "seed": 0})
    {'train': {'lr': 2}, 'seed': 0}

Values are read as YAML, and a value that is a number in any notation becomes one:
PyYAML reads ``3e-4`` and ``1e6`` as strings (YAML 1.1 wants a dot), which is never
what ``--set lr=3e-4`` means.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

# Decimal and scientific notation only: "inf", "nan" or "1_000" stay what YAML makes of them.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """One override value: YAML, with numbers in scientific notation read as numbers."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() else number
    return value


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1e6", "c=true"]`` -> ``{"a.b": 1000000, "c": True}``.

    Raises ``ValueError`` for an item without ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``dotted == "a.b"``, creating missing (or null) sections."""
    node = raw
    *parents, leaf = dotted.split(".")
    for i, key in enumerate(parents):
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            where = ".".join(parents[: i + 1])
            raise ValueError(f"cannot set {dotted!r}: {where!r} is {node!r}, not a section")
    node[leaf] = value


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``raw`` with every ``dotted.key: value`` of ``overrides`` set."""
    out = copy.deepcopy(dict(raw))
    for dotted, value in (overrides or {}).items():
        set_dotted(out, dotted, value)
    return out
