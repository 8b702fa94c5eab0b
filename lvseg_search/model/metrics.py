"""The Dice metric used as the search objective (``keras.ops`` only, any backend)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="lvseg_search")
class Dice(keras.metrics.Metric):
    """Mean per-image Dice of one class, from arg-max predictions.

    An image where both the prediction and the truth are empty counts as Dice 1
    (nothing to find, nothing found), as in the Sunnybrook evaluation.

    Args:
        class_id: The class scored (1: LV blood pool).
        name: Metric name (``dice`` becomes ``val_dice`` on validation data).
    """

    def __init__(self, class_id: int = 1, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_id = class_id
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.cast(ops.equal(ops.squeeze(ops.cast(y_true, "int32"), -1), self.class_id),
                         "float32")
        pred = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), self.class_id), "float32")
        inter = ops.sum(truth * pred, axis=(1, 2))
        denom = ops.sum(truth, axis=(1, 2)) + ops.sum(pred, axis=(1, 2))
        dice = ops.where(denom > 0, 2.0 * inter / ops.maximum(denom, 1.0), 1.0)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self):
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_id": self.class_id}
