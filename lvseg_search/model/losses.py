"""Segmentation losses on softmax probabilities (``keras.ops`` only, any backend).

``y_true`` holds integer class labels ``[B, H, W, 1]``; ``y_pred`` holds softmax
probabilities ``[B, H, W, C]``.
"""

from __future__ import annotations

import keras
from keras import ops

LOSSES = ("crossentropy", "dice", "crossentropy_dice")


def _one_hot(y_true, num_classes: int):
    labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
    return ops.one_hot(labels, num_classes)


@keras.saving.register_keras_serializable(package="lvseg_search")
class SoftDiceLoss(keras.losses.Loss):
    """1 - soft Dice, averaged over images and foreground classes.

    Soft Dice needs no threshold, so it trains the overlap directly and copes with
    the LV's small share of the image, where cross-entropy is dominated by background.
    """

    def __init__(self, smooth: float = 1.0, name: str = "soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = smooth

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        target = _one_hot(y_true, ops.shape(y_pred)[-1])[..., 1:]
        probs = y_pred[..., 1:]
        inter = ops.sum(target * probs, axis=(1, 2))
        denom = ops.sum(target, axis=(1, 2)) + ops.sum(probs, axis=(1, 2))
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return 1.0 - ops.mean(dice, axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="lvseg_search")
class CrossentropyDiceLoss(keras.losses.Loss):
    """Pixel-wise cross-entropy plus soft Dice: stable gradients early, overlap late."""

    def __init__(self, dice_weight: float = 1.0, name: str = "crossentropy_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight
        self._dice = SoftDiceLoss(reduction=None)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        return ops.mean(ce, axis=(1, 2)) + self.dice_weight * self._dice.call(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "dice_weight": self.dice_weight}


def get_loss(name: str) -> keras.losses.Loss:
    """Returns the loss called ``name`` (one of ``LOSSES``)."""
    if name == "crossentropy":
        return keras.losses.SparseCategoricalCrossentropy(name="crossentropy")
    if name == "dice":
        return SoftDiceLoss()
    if name == "crossentropy_dice":
        return CrossentropyDiceLoss()
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
