"""Cross-validation data: one training and one validation ``tf.data`` pipeline per
fold of the saved splits, built once and reused (cached) by every trial."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lvseg_search.pipeline import (
    PipelineConfig,
    batches_per_epoch,
    make_dataset,
    patient_files,
    patient_slices,
)


@dataclass
class CrossValidation:
    """The folds of a search.

    Attributes:
        data_dir: Prepared data folder.
        splits: Loaded ``splits.json`` contents.
        config: Pipeline settings (training folds get shuffling and augmentation).
        replicas: Model replicas fed by each batch (mirrored strategy).
    """

    data_dir: Path
    splits: dict[str, Any]
    config: PipelineConfig
    replicas: int = 1
    _datasets: dict[int, tuple[Any, Any, int, int]] = field(default_factory=dict, repr=False)
    _files: dict[str, Path] = field(default_factory=dict, repr=False)
    _val_images: dict[int, list[Any]] = field(default_factory=dict, repr=False)

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

    def fold(self, k: int) -> dict[str, Any]:
        """Fold ``k``'s data as keyword arguments of ``Model.fit``.

        Validation is neither shuffled nor augmented, and uses larger batches, since it
        keeps no gradients. Both datasets repeat, with the epoch length given as
        steps: Keras then keeps one iterator per fit, where a finite dataset costs two
        new iterators per epoch (one made and dropped at each epoch's end), which
        stalled every epoch by up to a second on 2 cores.

        Returns:
            ``x``, ``validation_data``, ``steps_per_epoch`` and ``validation_steps``.
        """
        if k not in self._datasets:
            train_ids, val_ids = self.patients(k, "train"), self.patients(k, "val")
            n_train = patient_slices(self.data_dir, train_ids)
            n_val = patient_slices(self.data_dir, val_ids)
            train_config = self.config.training()
            val_config = replace(self.config, batch_size=self.config.batch_size * 4)
            if self.replicas > 1:
                # Every batch must split evenly over the replicas: training drops its
                # last short batch, validation picks a size that loses the fewest images.
                train_config = replace(train_config, drop_remainder=True)
                size, drop = _val_batch_size(n_val, val_config.batch_size, self.replicas)
                val_config = replace(val_config, batch_size=size, drop_remainder=drop)
            train = make_dataset(self._shards(train_ids), train_config, n_train)
            val = make_dataset(self._shards(val_ids), val_config, n_val)
            self._datasets[k] = (train.repeat(), val.repeat(),
                                 batches_per_epoch(n_train, train_config),
                                 batches_per_epoch(n_val, val_config))
        train, val, train_steps, val_steps = self._datasets[k]
        return {"x": train, "validation_data": val, "steps_per_epoch": train_steps,
                "validation_steps": val_steps}

    def val_images(self, k: int) -> list[Any]:
        """Fold ``k``'s validation patients as stored (raw pixels, masks, spacing), for
        scoring at full resolution; read once and kept."""
        if k not in self._val_images:
            from lvseg_search.scoring import load_patients

            self._val_images[k] = load_patients(self.data_dir, self.patients(k, "val"))
        return self._val_images[k]


def _val_batch_size(n: int, batch: int, replicas: int) -> tuple[int, bool]:
    """A validation batch size for a mirrored model: ``(size, drop_remainder)``.

    tf.distribute splits every batch into per-replica chunks, and Keras needs those
    chunks equal, so sizes are multiples of ``replicas``; a size that divides ``n``
    keeps every image, otherwise the one dropping the fewest images is used.
    """
    best = replicas
    for chunk in range(max(1, batch // replicas), 0, -1):
        size = chunk * replicas
        if n % size == 0:
            return size, False
        if n % size < n % best:
            best = size
    return best, True
