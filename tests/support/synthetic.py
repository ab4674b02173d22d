"""Synthetic editing records for the tests (they live in :mod:`mend.testing.synthetic`)."""

from mend.testing.synthetic import LOCALITY, synthetic_records

__all__ = ["LOCALITY", "synthetic_records"]
