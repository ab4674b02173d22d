"""Editing data: loaders for zsRE, CounterFact, WikiBio, FEVER and wikitext edits.

Every loader returns a :class:`LoadedDataset` of :class:`EditRecord` objects (one
shape for all formats), a :class:`LoadReport` saying what was read, loaded and
skipped and why, and a content hash. ``load_dataset(path)`` detects the format.
"""

from mend.data.canonical import dataset_hash, record_to_dict
from mend.data.counterfact import load_counterfact, load_counterfact_flat
from mend.data.detect import FORMATS, detect_format, load_dataset
from mend.data.errors import (
    DataError,
    DatasetFileError,
    LoadReport,
    MalformedRecordError,
    OnError,
    RecordError,
    UnknownFormatError,
)
from mend.data.fever import load_fever
from mend.data.loading import LoadedDataset
from mend.data.records import EditRecord, LocalityProbe, RecordKind
from mend.data.splits import mix, split_of, split_records
from mend.data.wikibio import load_wikibio
from mend.data.wikitext import load_wikitext
from mend.data.zsre import load_zsre, nq_question

__all__ = [
    "FORMATS",
    "DataError",
    "DatasetFileError",
    "EditRecord",
    "LoadReport",
    "LoadedDataset",
    "LocalityProbe",
    "MalformedRecordError",
    "OnError",
    "RecordError",
    "RecordKind",
    "UnknownFormatError",
    "dataset_hash",
    "detect_format",
    "load_counterfact",
    "load_counterfact_flat",
    "load_dataset",
    "load_fever",
    "load_wikibio",
    "load_wikitext",
    "load_zsre",
    "mix",
    "nq_question",
    "record_to_dict",
    "split_of",
    "split_records",
]
