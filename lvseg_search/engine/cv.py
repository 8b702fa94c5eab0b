"""Cross-validation data: per fold of the saved splits, one training ``tf.data``
pipeline and the validation patients in memory, built once and reused by every trial."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvseg_search.data.manifest import PreparedData
from lvseg_search.data.pipeline import (
    PipelineConfig,
    batches_per_epoch,
    make_batches,
    patient_files,
    prepared_examples,
)

if TYPE_CHECKING:
    from lvseg_search.engine.validation import ValidationSet


@dataclass
class CrossValidation:
    """The folds of a search.

    Attributes:
        data: Prepared data folder (``manifest.open_data``).
        splits: Loaded ``splits.json`` contents.
        config: Pipeline settings (training data gets shuffling and augmentation).
        replicas: Model replicas fed by each batch (mirrored strategy).
        steps_per_epoch: Training batches per epoch (0: one pass over the fold's
            training slices).
    """

    data: PreparedData
    splits: dict[str, Any]
    config: PipelineConfig
    replicas: int = 1
    steps_per_epoch: int = 0
    _datasets: dict[int, tuple[Any, int]] = field(default_factory=dict, repr=False)
    _files: dict[str, Path] = field(default_factory=dict, repr=False)
    _validation: dict[int, ValidationSet] = field(default_factory=dict, repr=False)

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
            self._files.update(zip(missing, patient_files(self.data, missing, self.config),
                                   strict=True))
        return [self._files[p] for p in patients]

    def fold(self, k: int) -> dict[str, Any]:
        """Fold ``k``'s training data for one ``Model.fit``, as its keyword arguments.

        The examples are read, preprocessed and cached once per fold; the batches over
        them are a new dataset at every call, so that every fit of this fold sees the
        same stream of batches, whatever was trained before it in this process (see
        ``pipeline.make_batches``). The dataset repeats, with the epoch length given as
        steps (one pass over the training slices unless ``steps_per_epoch`` says
        otherwise): Keras then keeps one iterator per fit, where a finite dataset costs
        two new iterators per epoch, which stalled every epoch by up to a second on 2
        cores. Validation is not here: see :meth:`validation`.

        Returns:
            ``x`` and ``steps_per_epoch``.
        """
        config = self.config.training()
        if self.replicas > 1:
            # Every batch must split evenly over the replicas.
            config = replace(config, drop_remainder=True)
        if k not in self._datasets:
            train_ids = self.patients(k, "train")
            n_train = self.data.slices(train_ids)
            examples = prepared_examples(self._shards(train_ids), config, n_train)
            self._datasets[k] = (examples, self.steps_per_epoch
                                 or batches_per_epoch(n_train, config))
        examples, steps = self._datasets[k]
        return {"x": make_batches(examples, config, repeat=True), "steps_per_epoch": steps}

    def validation(self, k: int) -> ValidationSet:
        """Fold ``k``'s validation patients, read and preprocessed once and kept: as
        stored (for scoring at full resolution) and at the network's input size (for
        the per-epoch validation Dice)."""
        if k not in self._validation:
            from lvseg_search.engine.validation import validation_set
            from lvseg_search.evaluate.scoring import load_patient_images

            patients = load_patient_images(self.data, self.patients(k, "val"))
            self._validation[k] = validation_set(patients, self.config.image_size,
                                                 self.config.normalization,
                                                 self.config.spacing_mm)
        return self._validation[k]
