"""Turn a :class:`DataConfig` into training and validation records."""

from __future__ import annotations

from dataclasses import dataclass

from mend.data import dataset_hash, load_dataset, mix, split_records
from mend.data.errors import LoadReport
from mend.data.records import EditRecord
from mend.training.config import DataConfig, DataSource


@dataclass
class TrainingData:
    train: list[EditRecord]
    validation: list[EditRecord]
    reports: list[LoadReport]

    @property
    def train_hash(self) -> str:
        return dataset_hash(self.train)

    @property
    def validation_hash(self) -> str:
        return dataset_hash(self.validation)


def _load(sources: list[DataSource], on_error: str, seed: int) -> tuple[list[EditRecord], list[LoadReport]]:
    loaded = [load_dataset(s.path, s.format, on_error=on_error, limit=s.limit) for s in sources]
    reports = [d.report for d in loaded]
    if len(loaded) == 1:
        return list(loaded[0].records), reports
    return mix([d.records for d in loaded], [s.weight for s in sources], seed=seed), reports


def load_training_data(config: DataConfig, seed: int = 0) -> TrainingData:
    """Load, mix and split the configured files (deterministically)."""
    train, reports = _load(config.train, config.on_error, seed)
    if config.validation:
        validation, more = _load(config.validation, config.on_error, seed)
        reports += more
    else:
        parts = split_records(train, {"train": 1 - config.val_fraction, "val": config.val_fraction}, seed)
        train, validation = parts["train"], parts["val"]
    if not train or not validation:
        raise ValueError(f"empty split: {len(train)} training and {len(validation)} validation records")
    return TrainingData(train, validation, reports)
