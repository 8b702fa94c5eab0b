"""Cross-validation data: one training and one validation ``tf.data`` pipeline per
fold of the saved splits, built once and reused (cached) by every trial."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lvseg_search.pipeline import PipelineConfig, make_dataset, patient_files, patient_slices


@dataclass
class CrossValidation:
    """The folds of a search.

    Attributes:
        data_dir: Prepared data folder.
        splits: Loaded ``splits.json`` contents.
        config: Pipeline settings (training folds get shuffling and augmentation).
    """

    data_dir: Path
    splits: dict[str, Any]
    config: PipelineConfig
    _datasets: dict[int, tuple[Any, Any]] = field(default_factory=dict, repr=False)
    _files: dict[str, Path] = field(default_factory=dict, repr=False)

    @property
    def n_folds(self) -> int:
        """Number of folds."""
        return len(self.splits["folds"])

    def patients(self, k: int, part: str) -> list[str]:
        """Patient ids of fold ``k``'s ``"train"`` or ``"val"`` part."""
        return list(self.splits["folds"][k][part])

    def _shards(self, patients: list[str]) -> list[Path]:
        missing = [p for p in patients if p not in self._files]
        if missing:
            self._files.update(zip(missing, patient_files(self.data_dir, missing, self.config),
                                   strict=True))
        return [self._files[p] for p in patients]

    def fold(self, k: int):
        """``(train, val)`` datasets of fold ``k``; validation is neither shuffled nor
        augmented."""
        if k not in self._datasets:
            train_ids, val_ids = self.patients(k, "train"), self.patients(k, "val")
            train = make_dataset(self._shards(train_ids), self.config.training(),
                                 patient_slices(self.data_dir, train_ids))
            val = make_dataset(self._shards(val_ids), self.config,
                               patient_slices(self.data_dir, val_ids))
            self._datasets[k] = (train, val)
        return self._datasets[k]
