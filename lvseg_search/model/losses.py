"""Segmentation losses on softmax probabilities (``keras.ops`` only, any backend).

``y_true`` holds integer class labels ``[B, H, W, 1]``; ``y_pred`` holds softmax
probabilities ``[B, H, W, C]``.

Masks of partly labelled frames (an i-contour without an o-contour) hold
``classes.IGNORE`` where the pixel is not blood pool and not known to be background or
myocardium. With ``ignore`` set, such a pixel's cross-entropy is that of the set of
classes it may be (``-log(1 - p_blood_pool)``: the likelihood of what the expert said,
nothing more), and the Dice terms of every class but the blood pool leave out the
images that hold such pixels; for the blood pool it is a known negative. Without
``ignore`` the losses are the plain ones.
"""

from __future__ import annotations

import keras
from keras import ops

LOSSES = ("crossentropy", "dice", "crossentropy_dice")
_EPSILON = 1e-7  # Keras's own clip of probabilities in its cross-entropy


def _one_hot(y_true, num_classes: int):
    labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
    return ops.one_hot(labels, num_classes)


def _possible(y_true, num_classes: int, ignore: int, blood_pool: int):
    """Per pixel, the classes it may be ``[B, H, W, C]`` (one-hot where labelled; every
    class but the blood pool where ``ignore``), and the ignored pixels ``[B, H, W]``."""
    labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
    ignored = ops.equal(labels, ignore)
    onehot = ops.one_hot(ops.where(ignored, 0, labels), num_classes)
    not_blood = 1.0 - ops.one_hot(ops.full(ops.shape(labels), blood_pool, "int32"),
                                  num_classes)
    return ops.where(ops.expand_dims(ignored, -1), not_blood, onehot), ignored


@keras.saving.register_keras_serializable(package="lvseg_search")
class PartialCrossentropy(keras.losses.Loss):
    """Pixel-wise cross-entropy of the classes each pixel may be: the plain
    cross-entropy where a pixel is labelled, ``-log(1 - p_blood_pool)`` where it
    carries ``ignore``.

    Args:
        ignore: The label of partly labelled pixels.
        blood_pool: The class those pixels are known not to be.
    """

    def __init__(self, ignore: int, blood_pool: int = 1, name: str = "crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore = int(ignore)
        self.blood_pool = int(blood_pool)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        possible, _ = _possible(y_true, ops.shape(y_pred)[-1], self.ignore, self.blood_pool)
        likelihood = ops.sum(possible * ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON), axis=-1)
        return -ops.log(ops.clip(likelihood, _EPSILON, 1.0))

    def get_config(self) -> dict:
        return {**super().get_config(), "ignore": self.ignore, "blood_pool": self.blood_pool}


@keras.saving.register_keras_serializable(package="lvseg_search")
class SoftDiceLoss(keras.losses.Loss):
    """1 - soft Dice, averaged over images and foreground classes.

    Soft Dice needs no threshold, so it trains the overlap directly and copes with
    the LV's small share of the image, where cross-entropy is dominated by background.
    """

    def __init__(self, smooth: float = 1.0, name: str = "soft_dice",
                 ignore: int | None = None, blood_pool: int = 1, **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = smooth
        self.ignore = None if ignore is None else int(ignore)
        self.blood_pool = int(blood_pool)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        num_classes = ops.shape(y_pred)[-1]
        if self.ignore is None:
            target = _one_hot(y_true, num_classes)[..., 1:]
            probs = y_pred[..., 1:]
            inter = ops.sum(target * probs, axis=(1, 2))
            denom = ops.sum(target, axis=(1, 2)) + ops.sum(probs, axis=(1, 2))
            dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
            return 1.0 - ops.mean(dice, axis=-1)
        labels = ops.cast(ops.squeeze(y_true, axis=-1), "int32")
        ignored = ops.equal(labels, self.ignore)
        # An ignored pixel is a known negative of the blood pool, so its one-hot (the
        # background's) serves the blood pool's term as it is.
        target = ops.one_hot(ops.where(ignored, 0, labels), num_classes)[..., 1:]
        probs = y_pred[..., 1:]
        inter = ops.sum(target * probs, axis=(1, 2))
        denom = ops.sum(target, axis=(1, 2)) + ops.sum(probs, axis=(1, 2))
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        # The other classes' terms count only on fully labelled images: on a partly
        # labelled one the myocardium is there but unlabelled, and an empty target
        # would teach the network to keep it away from the blood pool (measured: a
        # background gap between the two, the myocardium lost).
        partial = ops.cast(ops.any(ignored, axis=(1, 2)), "float32")[:, None]
        is_blood = ops.cast(ops.equal(ops.arange(1, num_classes), self.blood_pool),
                            "float32")[None, :]
        weight = ops.maximum(is_blood, 1.0 - partial)
        return 1.0 - ops.sum(dice * weight, axis=-1) / ops.sum(weight, axis=-1)

    def get_config(self) -> dict:
        config = {**super().get_config(), "smooth": self.smooth}
        if self.ignore is not None:
            config.update(ignore=self.ignore, blood_pool=self.blood_pool)
        return config


@keras.saving.register_keras_serializable(package="lvseg_search")
class CrossentropyDiceLoss(keras.losses.Loss):
    """Pixel-wise cross-entropy plus soft Dice: stable gradients early, overlap late."""

    def __init__(self, dice_weight: float = 1.0, name: str = "crossentropy_dice",
                 ignore: int | None = None, blood_pool: int = 1, **kwargs):
        super().__init__(name=name, **kwargs)
        self.dice_weight = dice_weight
        self.ignore = None if ignore is None else int(ignore)
        self.blood_pool = int(blood_pool)
        self._dice = SoftDiceLoss(reduction=None, ignore=ignore, blood_pool=blood_pool)
        self._partial = (None if ignore is None else
                         PartialCrossentropy(ignore, blood_pool, reduction=None))

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        if self._partial is None:
            ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
        else:
            ce = self._partial.call(y_true, y_pred)
        return ops.mean(ce, axis=(1, 2)) + self.dice_weight * self._dice.call(y_true, y_pred)

    def get_config(self) -> dict:
        config = {**super().get_config(), "dice_weight": self.dice_weight}
        if self.ignore is not None:
            config.update(ignore=self.ignore, blood_pool=self.blood_pool)
        return config


def get_loss(name: str, ignore: int | None = None, blood_pool: int = 1) -> keras.losses.Loss:
    """Returns the loss called ``name`` (one of ``LOSSES``).

    Args:
        name: The loss.
        ignore: The label of partly labelled pixels, where the masks hold any (see the
            module's docstring); None: the plain losses.
        blood_pool: The class partly labelled pixels are known not to be.
    """
    if name == "crossentropy":
        if ignore is not None:
            return PartialCrossentropy(ignore, blood_pool)
        return keras.losses.SparseCategoricalCrossentropy(name="crossentropy")
    if name == "dice":
        return SoftDiceLoss(ignore=ignore, blood_pool=blood_pool)
    if name == "crossentropy_dice":
        return CrossentropyDiceLoss(ignore=ignore, blood_pool=blood_pool)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
