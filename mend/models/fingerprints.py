"""Comparing the ``base_model`` records of editors, edits and registry versions.

A record names the weights it was made on by ``weights_fingerprint``
(:meth:`mend.models.editable.EditableModel.weights_fingerprint`: the weights alone) and by
``fingerprint``, the hash of the architecture, the edited matrices and their weights that
records carried before (it changes with the target set). Records written before the
weights fingerprint have only the second; both are written, so old and new compare.
"""

from __future__ import annotations


def recorded_fingerprint(record: dict) -> str | None:
    """The fingerprint a record is compared by (the weights one where it has it)."""
    return record.get("weights_fingerprint") or record.get("fingerprint") or None


def same_weights(a: dict, b: dict) -> bool:
    """Whether two records name the same weights: by weights fingerprint when both have
    one, else by the target-set fingerprint of records written before it."""
    if a.get("weights_fingerprint") and b.get("weights_fingerprint"):
        return a["weights_fingerprint"] == b["weights_fingerprint"]
    return a.get("fingerprint") == b.get("fingerprint")
