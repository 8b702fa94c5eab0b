"""Test-time augmentation: a network's probabilities averaged over flipped and turned
copies of its input, each mapped back before averaging.

A short-axis slice has no preferred orientation on the network's square grid (scanners
and planners place the heart at any turn), so the network's answers for the dihedral
copies of an image are equally valid guesses; their mean is a better one (nnU-Net
mirrors at test time for the same reason). All copies go through the network as one
batch. ``keras.ops`` only (flips and transposes), so the layers export to every format.
"""

from __future__ import annotations

import keras
from keras import layers, ops

TTA_MODES = ("none", "flips", "dihedral")


def views(mode: str) -> list[tuple[bool, bool, bool]]:
    """The transforms of a mode, each as (transpose, flip rows, flip columns); the
    identity first.

    Raises:
        ValueError: An unknown mode.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r} (one of {TTA_MODES})")
    flips = [(False, False), (True, False), (False, True), (True, True)]
    if mode == "none":
        flips = flips[:1]
    turns = (False, True) if mode == "dihedral" else (False,)
    # transpose + flips give the 8 elements of the square's symmetry group (the 90 and
    # 270 degree turns are a transpose and one flip).
    return [(t, r, c) for t in turns for r, c in flips]


def _forward(x, view):
    transpose, rows, cols = view
    if transpose:
        x = ops.transpose(x, (0, 2, 1, 3))
    if rows:
        x = ops.flip(x, axis=1)
    if cols:
        x = ops.flip(x, axis=2)
    return x


def _backward(y, view):
    transpose, rows, cols = view
    if cols:
        y = ops.flip(y, axis=2)
    if rows:
        y = ops.flip(y, axis=1)
    if transpose:
        y = ops.transpose(y, (0, 2, 1, 3))
    return y


@keras.saving.register_keras_serializable(package="lvseg_search")
class AugmentedViews(layers.Layer):
    """Images ``[B, S, S, C]`` -> their transformed copies ``[V * B, S, S, C]`` (view
    by view), for one network call.

    Args:
        mode: ``none``, ``flips`` (4 views) or ``dihedral`` (8).
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self._views = views(mode)

    def call(self, x):
        if len(self._views) == 1:
            return x
        return ops.concatenate([_forward(x, v) for v in self._views], axis=0)

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None else shape[0] * len(self._views)
        return (batch, *shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="lvseg_search")
class AverageViews(layers.Layer):
    """The inverse of :class:`AugmentedViews`: outputs ``[V * B, S, S, C]`` of the
    views, each transformed back, averaged to ``[B, S, S, C]``.

    Args:
        mode: The mode of the views.
    """

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        self.mode = mode
        self._views = views(mode)

    def call(self, y):
        n = len(self._views)
        if n == 1:
            return y
        # Rows and columns are the network's static size: one reshape splits the views.
        y = ops.reshape(y, (n, -1, y.shape[1], y.shape[2], y.shape[3]))
        back = [_backward(y[i], v) for i, v in enumerate(self._views)]
        return ops.mean(ops.stack(back), axis=0)

    def compute_output_shape(self, shape):
        batch = None if shape[0] is None else shape[0] // len(self._views)
        return (batch, *shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
