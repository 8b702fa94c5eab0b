"""The deployable model's layers, registered with Keras (``lvseg_search>NAME``), so a
saved ``.keras`` model loads with ``safe_mode=True`` once this module is imported. The
registered names are part of every exported file: keep them."""

from __future__ import annotations

import keras
from keras import layers, ops

from lvseg_search.classes import Classes
from lvseg_search.model.graph_ops import (
    EPS,
    NORMALIZATIONS,
    convex_hull,
    label_map,
    largest_region,
    lv_mask,
    per_contour,
    per_image_spacing,
    resize_bilinear,
)
from lvseg_search.model.resample import from_grid, to_grid


@keras.saving.register_keras_serializable(package="lvseg_search")
class Preprocess(layers.Layer):
    """Per-image normalization, then resampling onto the network's grid, as in the
    training pipeline (``pipeline._prepare``).

    Args:
        image_size: Rows and columns the network takes.
        normalization: ``zscore``, ``minmax`` or ``percentile`` (1st to 99th).
        spacing_mm: The grid's pixel size; None resizes the whole image to
            ``image_size`` (models of ``--spacing none`` searches and of contract 1).
    """

    def __init__(self, image_size: int, normalization: str = "zscore",
                 spacing_mm: float | None = None, **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}")
        self.image_size = int(image_size)
        self.normalization = normalization
        self.spacing_mm = None if spacing_mm is None else float(spacing_mm)

    def call(self, raw, pixel_spacing=None, centre_mm=None):
        x = ops.cast(raw, "float32")
        if self.normalization == "zscore":
            mean = ops.mean(x, axis=(1, 2), keepdims=True)
            var = ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True)
            x = (x - mean) / (ops.sqrt(var) + EPS)
        elif self.normalization == "minmax":
            lo = ops.min(x, axis=(1, 2), keepdims=True)
            hi = ops.max(x, axis=(1, 2), keepdims=True)
            x = (x - lo) / (hi - lo + EPS)
        else:
            flat = ops.sort(ops.reshape(x, (ops.shape(x)[0], -1)), axis=-1)
            n = ops.cast(ops.shape(flat)[1] - 1, "float32")
            lo = ops.take(flat, ops.cast(ops.round(0.01 * n), "int32"), axis=1)
            hi = ops.take(flat, ops.cast(ops.round(0.99 * n), "int32"), axis=1)
            lo = ops.reshape(lo, (-1, 1, 1))
            hi = ops.reshape(hi, (-1, 1, 1))
            x = (ops.clip(x, lo, hi) - lo) / (hi - lo + EPS)
        # expand_dims, not x[..., None]: TFLite has no strided slice that adds an axis.
        x = ops.expand_dims(x, -1)
        if self.spacing_mm is not None:
            return to_grid(x, per_image_spacing(pixel_spacing, raw), self.image_size,
                           self.spacing_mm, centre_mm)
        size = (self.image_size, self.image_size)
        return ops.image.resize(x, size, interpolation="bilinear")

    def compute_output_shape(self, raw_shape, pixel_spacing_shape=None, centre_mm_shape=None):
        return (raw_shape[0], self.image_size, self.image_size, 1)

    def get_config(self) -> dict:
        config = {**super().get_config(), "image_size": self.image_size,
                  "normalization": self.normalization}
        if self.spacing_mm is not None:  # contract 1 models' configs stay loadable as saved
            config["spacing_mm"] = self.spacing_mm
        return config


# Passes of the network that re-centre its field of view on the LV before the pass that
# segments it (roi = localized). Each is on the training grid, so the anatomy keeps its
# trained size: on the real subset, locating on a coarser grid that held the whole image
# (anatomy x0.44) lost the heart on some slices and cut the held-out Dice from 0.869 to
# 0.781; one re-centring kept it at 0.867 and raised hearts moved 40 mm off the image
# centre from 0.747 to 0.829; a second re-centring changed neither (0.867, 0.828).
LOCALIZE_PASSES = 1


@keras.saving.register_keras_serializable(package="lvseg_search")
class LocateLV(layers.Layer):
    """Where the LV lies, from the network's probabilities on a grid centred at
    ``centre_mm``: the centroid of the largest region of the arg-max LV, in mm from each
    image's centre (row, column); ``centre_mm`` itself where no LV is found.

    A heart far from the image centre sits at the edge of the centred field of view,
    where the network sees little of its surroundings, or beyond it; cutting the field
    of view again around the LV found gives the network the view it trained on.

    Args:
        image_size: The networks' grid rows and columns.
        spacing_mm: The grid's pixel size.
        class_id: The LV class.
    """

    def __init__(self, image_size: int, spacing_mm: float, class_id: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.spacing_mm = float(spacing_mm)
        self.class_id = int(class_id)

    def call(self, probabilities, centre_mm=None):
        _, mask = lv_mask(ops.cast(probabilities, "float32"), self.class_id)
        keep = ops.cast(largest_region(mask), "float32")
        size = self.image_size
        index = ops.cast(ops.arange(size), "float32") - (size / 2 - 0.5)
        count = ops.sum(keep, axis=(1, 2))
        row = ops.sum(keep * ops.reshape(index, (1, size, 1)), axis=(1, 2))
        col = ops.sum(keep * ops.reshape(index, (1, 1, size)), axis=(1, 2))
        scale = self.spacing_mm * ops.cast(count > 0, "float32") / ops.maximum(count, 1.0)
        moved = ops.stack([row * scale, col * scale], axis=-1)
        return moved if centre_mm is None else moved + centre_mm

    def compute_output_shape(self, probabilities_shape, centre_mm_shape=None):
        return (probabilities_shape[0], 2)

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size,
                "spacing_mm": self.spacing_mm, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="lvseg_search")
class ChosenCentre(layers.Layer):
    """Where each image's field of view is cut: the caller's ``roi_centre_mm`` (mm from
    the image's centre, row and column), or the model's own choice (``own``: the
    located LV; None: the image centre) for the images whose given centre holds a NaN.

    ``x != x`` finds NaN with a comparison, an op every exported format has.
    """

    def call(self, raw, given, own=None):
        given = ops.reshape(ops.cast(given, "float32"), (ops.shape(raw)[0], 2))
        unset = ops.any(ops.not_equal(given, given), axis=-1, keepdims=True)
        return ops.where(unset, 0.0 if own is None else own, given)

    def compute_output_shape(self, raw_shape, given_shape, own_shape=None):
        return (raw_shape[0], 2)


@keras.saving.register_keras_serializable(package="lvseg_search")
class RestoreSize(layers.Layer):
    """Class probabilities ``[B, S, S, C]`` -> the LV class's probability back on the raw
    input's grid ``[B, H, W]``, and its arg-max mask (uint8, 1 = LV). Outside the
    network's field of view the probability is 0 and the mask empty.

    With ``labels`` it returns the arg-max class ids (``graph_ops.label_map``) instead
    of the LV's mask, and the class probabilities on the input grid as a third output
    (models of more than one foreground class).

    Args:
        class_id: The LV class (1: blood pool).
        spacing_mm: The network grid's pixel size; None: the network saw the whole image
            resized (see :class:`Preprocess`).
        labels: Return class ids and the class probabilities too.
    """

    def __init__(self, class_id: int = 1, spacing_mm: float | None = None,
                 labels: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.class_id = int(class_id)
        self.spacing_mm = None if spacing_mm is None else float(spacing_mm)
        self.labels = bool(labels)

    def call(self, probabilities, raw, pixel_spacing=None, centre_mm=None):
        shape = ops.shape(raw)
        probabilities = ops.cast(probabilities, "float32")
        if self.spacing_mm is not None:
            full = from_grid(probabilities, per_image_spacing(pixel_spacing, raw), shape[1],
                             shape[2], self.spacing_mm, centre_mm)
        else:
            full = resize_bilinear(probabilities, shape[1], shape[2])
        if self.labels:
            return full[..., self.class_id], label_map(full), full
        return lv_mask(full, self.class_id)

    def compute_output_shape(self, probabilities_shape, raw_shape, pixel_spacing_shape=None,
                             centre_mm_shape=None):
        shape = (raw_shape[0], raw_shape[1], raw_shape[2])
        if self.labels:
            return shape, shape, (*shape, probabilities_shape[-1])
        return shape, shape

    def get_config(self) -> dict:
        config = {**super().get_config(), "class_id": self.class_id}
        if self.spacing_mm is not None:
            config["spacing_mm"] = self.spacing_mm
        if self.labels:
            config["labels"] = True
        return config


@keras.saving.register_keras_serializable(package="lvseg_search")
class ContourRegions(layers.Layer):
    """Post-processing of label maps ``[B, H, W]`` (uint8 class ids) per contour:
    ``postprocess.per_contour`` inside the graph (tested equal): the largest region
    (``step="largest_region"``, of the other classes too) or the convex hull
    (``step="convex_hull"``) of the endocardial and the epicardial region, the
    myocardium the ring between them.

    Args:
        classes: ``classes.Classes.to_json()`` of the model's classes.
        step: ``largest_region`` or ``convex_hull``.
    """

    STEPS = {"largest_region": largest_region, "convex_hull": convex_hull}

    def __init__(self, classes: dict, step: str = "largest_region", **kwargs):
        super().__init__(**kwargs)
        if step not in self.STEPS:
            raise ValueError(f"unknown step {step!r} (one of {tuple(self.STEPS)})")
        self.classes = dict(classes)
        self.step = step
        self._classes = Classes.from_json(self.classes)

    def call(self, labels):
        return per_contour(labels, self._classes, self.STEPS[self.step],
                           others=self.step == "largest_region")

    def compute_output_shape(self, labels_shape):
        return labels_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "classes": self.classes, "step": self.step}


@keras.saving.register_keras_serializable(package="lvseg_search")
class LargestRegion(layers.Layer):
    """Keeps each image's largest 4-connected region of binary masks ``[B, H, W]``
    (uint8): ``postprocess.largest_region`` inside the graph, so that every exported
    format delivers the masks the search and ``export`` scored (tested equal).

    Written by hand: Keras has no connected-components op, and TensorFlow's (in the
    retired TensorFlow Addons) converts to neither TFLite nor ONNX. Regions are labelled
    by propagating the smallest pixel index with pointer jumping and measured from the
    sorted labels (``graph_ops.largest_region``); the first of equally large ones is
    kept, as with scipy's labels.
    """

    def call(self, binary):
        return largest_region(binary)

    def compute_output_shape(self, binary_shape):
        return binary_shape


@keras.saving.register_keras_serializable(package="lvseg_search")
class ConvexHull(layers.Layer):
    """Fills each image's mask ``[B, H, W]`` (uint8) to its convex hull:
    ``postprocess.convex_hull`` inside the graph (tested equal), as the intersection of
    the mask's extents along ``postprocess.HULL_DIRECTIONS`` directions.

    Written by hand: neither Keras nor TensorFlow has a convex-hull op; reductions and
    comparisons convert to every exported format. Meant after :class:`LargestRegion`
    (the hull of several regions would bridge them).
    """

    def call(self, binary):
        return convex_hull(binary)

    def compute_output_shape(self, binary_shape):
        return binary_shape
