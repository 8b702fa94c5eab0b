"""The deployable model (serving contract 2): raw stored pixel values ``[batch, H, W]``
of any size and their pixel spacing ``[batch, 2]`` (row, column, mm) in, LV
probabilities and mask on the input grid out. A second model of the same layers
(``at_centre``) also takes where to cut each image's field of view (``roi_centre_mm``),
so that a caller that sees a whole study can centre every image's view on the study's
LV (``evaluate.study_roi``).

The search trains networks on normalized ``S x S`` images of one physical grid (``S``
pixels of the target spacing, centred on the image; see ``resample``); this wraps one (or
an ensemble of several) with the same per-image normalization and resampling the
training pipeline applies, optional test-time augmentation (``tta``), the inverse
resampling and optional largest-region post-processing, so every exported format
(SavedModel, ``.keras``, TFLite, ONNX) and ``predict`` run exactly one code path.
Models of searches made with ``--spacing none`` resize whole images to ``S x S``
instead (and ignore the spacing). ``keras.ops`` only: the wrapper is plain Keras and
loads with ``safe_mode=True`` once this module is imported (it registers the layers
below).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from lvseg_search.model.postprocess import HULL_TOLERANCE, hull_directions
from lvseg_search.model.resample import from_grid, to_grid
from lvseg_search.model.tta import AugmentedViews, AverageViews

NORMALIZATIONS = ("zscore", "minmax", "percentile")
EPS = 1e-6  # the same epsilon as the training pipeline's normalization


def _per_image(pixel_spacing, raw):
    """The spacing as ``[batch, 2]``: a reshape that fails inside the graph when the
    spacing holds another number of values than two per image (a SavedModel signature
    checks the dtype, not the shape; where the graph knows the last axis is 2, as from
    the signature, only the number of rows is checked at run time)."""
    return ops.reshape(ops.cast(pixel_spacing, "float32"), (ops.shape(raw)[0], 2))


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
            return to_grid(x, _per_image(pixel_spacing, raw), self.image_size,
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


def lv_mask(probabilities, class_id: int):
    """The LV's probability ``[B, H, W]`` and its arg-max mask (uint8) from class
    probabilities ``[B, H, W, C]``.

    A comparison with the per-pixel maximum rather than argmax: TensorFlow's argmax
    lowers to bit operations that TFLite's builtin ops lack. Where every class is 0
    (outside the field of view) there is no LV.
    """
    lv = probabilities[..., class_id]
    mask = ops.cast(ops.logical_and(ops.greater_equal(lv, ops.max(probabilities, axis=-1)),
                                    ops.greater(lv, 0.0)), "uint8")
    return lv, mask


def _interpolation_matrix(out_size, in_size: int):
    """``[out, in]`` weights of bilinear resampling with half-pixel centres (the
    convention of ``tf.image.resize`` and ``jax.image.resize``)."""
    scale = in_size / ops.cast(out_size, "float32")
    coord = (ops.cast(ops.arange(out_size), "float32") + 0.5) * scale - 0.5
    coord = ops.clip(coord, 0.0, in_size - 1.0)
    lower = ops.floor(coord)
    frac = ops.expand_dims(coord - lower, -1)
    lower = ops.cast(lower, "int32")
    upper = ops.minimum(lower + 1, in_size - 1)
    return (ops.one_hot(lower, in_size) * (1.0 - frac)
            + ops.one_hot(upper, in_size) * frac)


def resize_bilinear(images, height, width):
    """Bilinear resize of ``[B, S, S, C]`` to a size known only at run time.

    Written by hand because ``keras.ops.image.resize`` checks its size with Python
    comparisons, which a symbolic (traced) output size cannot pass. Resampling is
    separable, so it is two small matrix products.
    """
    rows = _interpolation_matrix(height, images.shape[1])
    cols = _interpolation_matrix(width, images.shape[2])
    return ops.einsum("hs,bstc,wt->bhwc", rows, images, cols)


@keras.saving.register_keras_serializable(package="lvseg_search")
class RestoreSize(layers.Layer):
    """Class probabilities ``[B, S, S, C]`` -> the LV class's probability back on the raw
    input's grid ``[B, H, W]``, and its arg-max mask (uint8, 1 = LV). Outside the
    network's field of view the probability is 0 and the mask empty.

    Args:
        class_id: The LV class (1: blood pool).
        spacing_mm: The network grid's pixel size; None: the network saw the whole image
            resized (see :class:`Preprocess`).
    """

    def __init__(self, class_id: int = 1, spacing_mm: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.class_id = int(class_id)
        self.spacing_mm = None if spacing_mm is None else float(spacing_mm)

    def call(self, probabilities, raw, pixel_spacing=None, centre_mm=None):
        shape = ops.shape(raw)
        probabilities = ops.cast(probabilities, "float32")
        if self.spacing_mm is not None:
            full = from_grid(probabilities, _per_image(pixel_spacing, raw), shape[1],
                             shape[2], self.spacing_mm, centre_mm)
        else:
            full = resize_bilinear(probabilities, shape[1], shape[2])
        return lv_mask(full, self.class_id)

    def compute_output_shape(self, probabilities_shape, raw_shape, pixel_spacing_shape=None,
                             centre_mm_shape=None):
        shape = (raw_shape[0], raw_shape[1], raw_shape[2])
        return shape, shape

    def get_config(self) -> dict:
        config = {**super().get_config(), "class_id": self.class_id}
        if self.spacing_mm is not None:
            config["spacing_mm"] = self.spacing_mm
        return config


def region_labels(binary):
    """Labels the 4-connected regions of binary masks.

    Every foreground pixel starts with its own flat index and takes the smallest index
    among its 4 neighbours until nothing changes; in the same step it also takes the
    label of the pixel its label points to (pointer jumping: a label is always the index
    of a pixel of the same region), so a compact region settles in a few dozen steps,
    not in as many as it is long.

    Args:
        binary: Masks ``[B, H, W]``, nonzero = foreground (any integer or bool dtype).

    Returns:
        int32 ``[B, H, W]``: per foreground pixel, the flat index of its region's first
        pixel in raster order (scipy's labelling order); ``H * W`` for background.
    """
    shape = ops.shape(binary)
    batch, height, width = shape[0], shape[1], shape[2]
    n = height * width
    foreground = ops.greater(binary, 0)
    background = ops.cast(n, "int32")
    index = ops.reshape(ops.arange(n, dtype="int32"), (1, height, width))

    def step(labels):
        padded = ops.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=n)
        neighbours = ops.minimum(
            ops.minimum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1]),
            ops.minimum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]))
        labels = ops.reshape(ops.where(foreground, ops.minimum(labels, neighbours),
                                       background), (batch, -1))
        pointed = ops.take_along_axis(labels, ops.minimum(labels, background - 1), axis=1)
        labels = ops.where(labels < background, ops.minimum(labels, pointed), background)
        return ops.reshape(labels, (batch, height, width))

    def body(labels, changed):
        new = step(labels)
        return new, ops.any(ops.not_equal(new, labels))

    labels, _ = ops.while_loop(lambda labels, changed: changed, body,
                               (ops.where(foreground, index, background),
                                ops.convert_to_tensor(True)))
    return labels


def largest_region(binary):
    """Each image's largest 4-connected region of binary masks ``[B, H, W]``, as uint8
    (the first of equally large ones); see :class:`LargestRegion`."""
    labels = region_labels(binary)
    batch = ops.shape(binary)[0]
    flat = ops.reshape(labels, (batch, -1))
    n = ops.shape(flat)[1]
    background = ops.cast(n, "int32")
    # Every region's size from the labels sorted: a region is a run of equal labels,
    # and each position finds its run's first one by pointer jumping (a step per
    # doubling of the longest run). Memory stays linear in the pixels in every format:
    # a segment sum converts to ONNX as a table of segments x largest segment, which
    # asked 134 GB for four 256 x 256 masks; a loop over the regions took a step per
    # region, seconds per batch on a barely trained network's speckled masks.
    ordered = ops.sort(flat, axis=1)
    position = ops.broadcast_to(ops.expand_dims(ops.arange(n, dtype="int32"), 0),
                                ops.shape(flat))
    first = ops.concatenate([ops.ones_like(ordered[:, :1], dtype="bool"),
                             ops.not_equal(ordered[:, 1:], ordered[:, :-1])], axis=1)
    start = ops.where(first, position, position - 1)

    def jump(start, changed):
        further = ops.take_along_axis(start, start, axis=1)
        return further, ops.any(ops.not_equal(further, start))

    start, _ = ops.while_loop(lambda start, changed: changed, jump,
                              (start, ops.convert_to_tensor(True)))
    # A run's length at each of its positions so far, largest at its last; background
    # runs count 0. Labels ascend, so arg-max's first maximum is the first of equally
    # large regions, as scipy's order has it.
    length = ops.where(ordered < background, position - start + 1, 0)
    best = ops.take_along_axis(ordered, ops.expand_dims(
        ops.cast(ops.argmax(length, axis=1), "int32"), 1), axis=1)
    keep = ops.logical_and(ops.equal(flat, best), flat < background)
    return ops.reshape(ops.cast(keep, "uint8"), ops.shape(binary))


@keras.saving.register_keras_serializable(package="lvseg_search")
class LargestRegion(layers.Layer):
    """Keeps each image's largest 4-connected region of binary masks ``[B, H, W]``
    (uint8): ``postprocess.largest_region`` inside the graph, so that every exported
    format delivers the masks the search and ``export`` scored (tested equal).

    Written by hand: Keras has no connected-components op, and TensorFlow's (in the
    retired TensorFlow Addons) converts to neither TFLite nor ONNX. Regions are visited
    in the order of their first pixel and the first of equally large ones is kept, as
    with scipy's labels. A mask of many regions costs one pass over it per region.
    """

    def call(self, binary):
        return largest_region(binary)

    def compute_output_shape(self, binary_shape):
        return binary_shape


def convex_hull(binary):
    """Each image's convex hull of binary masks ``[B, H, W]``, as uint8; see
    :class:`ConvexHull`."""
    shape = ops.shape(binary)
    rows = ops.cast(ops.arange(shape[1]), "float32")[None, :, None]
    cols = ops.cast(ops.arange(shape[2]), "float32")[None, None, :]
    inside = ops.greater(binary, 0)
    big = ops.convert_to_tensor(3.0e38, "float32")
    keep = None
    # One direction at a time (unrolled): [B, H, W] at a time instead of [B, H, W, D].
    for dr, dc in hull_directions().tolist():
        proj = rows * dr + cols * dc  # [1, H, W], as postprocess.convex_hull rounds it
        low = ops.min(ops.where(inside, proj, big), axis=(1, 2), keepdims=True)
        high = ops.max(ops.where(inside, proj, -big), axis=(1, 2), keepdims=True)
        # An empty mask has low > high, so its hull stays empty.
        within = ops.logical_and(ops.greater_equal(proj, low - HULL_TOLERANCE),
                                 ops.less_equal(proj, high + HULL_TOLERANCE))
        keep = within if keep is None else ops.logical_and(keep, within)
    return ops.cast(keep, "uint8")


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


RAW = "raw"
SPACING = "pixel_spacing_mm"
ROI_CENTRE = "roi_centre_mm"


ROI_MODES = ("centre", "localized")


def _check_roi(roi: str, spacing_mm: float | None) -> None:
    if roi not in ROI_MODES:
        raise ValueError(f"unknown roi {roi!r} (one of {ROI_MODES})")
    if roi == "localized" and spacing_mm is None:
        raise ValueError("roi 'localized' needs a physical grid; this model resizes whole "
                         "images")


def build_serving_model(networks: Sequence[keras.Model], image_size: int,
                        normalization: str, spacing_mm: float | None,
                        class_id: int = 1, tta: str = "none",
                        largest_region: bool = True, roi: str = "centre",
                        convex_hull: bool = False, at_centre: bool = False) -> keras.Model:
    """Wraps trained networks into the deployable model (serving contract 2).

    Args:
        networks: One network, or several whose probabilities are averaged (an ensemble
            of fold models).
        image_size: The networks' input rows and columns.
        normalization: The per-image normalization used in training.
        spacing_mm: The networks' grid pixel size (None: whole images resized).
        class_id: The LV class.
        tta: Test-time augmentation (``tta.TTA_MODES``): probabilities averaged over
            flipped and turned copies of the network's input.
        largest_region: Deliver each image's largest region of the arg-max (else the
            arg-max itself).
        roi: ``centre``: the network's field of view is cut around the image centre;
            ``localized``: around the LV found by :data:`LOCALIZE_PASSES` earlier passes
            of the same networks, each re-centred on the LV of the one before
            (:class:`LocateLV`).
        convex_hull: Fill the largest region to its convex hull (:class:`ConvexHull`;
            only with ``largest_region``).
        at_centre: Also take ``roi_centre_mm`` (a physical grid only).

    Returns:
        A model from ``{"raw": int16 [B, H, W], "pixel_spacing_mm": float32 [B, 2]}`` to
        ``{"probabilities": float32 [B, H, W], "mask": uint8 [B, H, W]}``. With
        ``at_centre`` it also takes ``"roi_centre_mm": float32 [B, 2]``: each image's
        field of view is cut there, in mm from the image's centre (rows holding a NaN:
        where the model would cut it).

    Raises:
        ValueError: An unknown ``roi``, ``localized`` or ``at_centre`` without a physical
            grid, or ``convex_hull`` without ``largest_region``.
    """
    _check_roi(roi, spacing_mm)
    if at_centre and spacing_mm is None:
        raise ValueError("at_centre needs a physical grid; this model resizes whole images")
    if convex_hull and not largest_region:
        raise ValueError("convex_hull needs largest_region: the hull of several regions "
                         "would bridge them")
    raw = keras.Input((None, None), dtype="int16", name=RAW)
    spacing = keras.Input((2,), dtype="float32", name=SPACING)
    inputs = {RAW: raw, SPACING: spacing}
    if at_centre:
        inputs[ROI_CENTRE] = keras.Input((2,), dtype="float32", name=ROI_CENTRE)
    # Uncompiled views of the trained networks (same layers and weights): the saved
    # model then needs no loss or metric classes to load. Fold models share one name,
    # so an ensemble names each apart.
    networks = [keras.Model(net.input, net.output,
                            name=net.name if len(networks) == 1 else f"{net.name}_{k}")
                for k, net in enumerate(networks)]

    def run_networks(x, name):
        outputs = [net(x) for net in networks]
        return outputs[0] if len(outputs) == 1 else layers.Average(name=name)(outputs)

    centre = None
    for step in range(LOCALIZE_PASSES if roi == "localized" else 0):
        view = Preprocess(image_size, normalization, spacing_mm, name=f"locate_view_{step}",
                          dtype="float32")(raw, spacing, centre)
        centre = LocateLV(image_size, spacing_mm, class_id, name=f"locate_lv_{step}",
                          dtype="float32")(run_networks(view, f"ensemble_locate_{step}"),
                                           centre)
    if at_centre:
        centre = ChosenCentre(name="chosen_centre", dtype="float32")(raw, inputs[ROI_CENTRE],
                                                                     centre)
    x = Preprocess(image_size, normalization, spacing_mm, name="preprocess",
                   dtype="float32")(raw, spacing, centre)
    if tta != "none":
        x = AugmentedViews(tta, name="tta_views", dtype="float32")(x)
    probs = run_networks(x, "ensemble")
    if tta != "none":
        probs = AverageViews(tta, name="tta_average", dtype="float32")(probs)
    lv, mask = RestoreSize(class_id, spacing_mm, name="restore_size",
                           dtype="float32")(probs, raw, spacing, centre)
    if largest_region:
        mask = LargestRegion(name="largest_region")(mask)
    if convex_hull:
        mask = ConvexHull(name="convex_hull")(mask)
    return keras.Model(inputs, {"probabilities": lv, "mask": mask}, name="lvseg")


def make_predictor(networks: Sequence[keras.Model], image_size: int, normalization: str,
                   spacing_mm: float | None, class_id: int = 1, tta: str = "none",
                   roi: str = "centre"):
    """The serving model's computation as a plain function, run eagerly.

    Scoring a fold model this way builds no wrapper model and traces no graph, which
    keeps the search's per-trial cost and memory down. Its mask is the arg-max: the
    largest-region step is left to ``scoring.segment``, which every caller runs and
    whose SciPy labelling (tested equal to :class:`LargestRegion`) is faster eagerly.

    Args:
        networks: As for :func:`build_serving_model`.
        image_size: The networks' input rows and columns.
        normalization: The per-image normalization used in training.
        spacing_mm: The networks' grid pixel size (None: whole images resized).
        class_id: The LV class.
        tta: Test-time augmentation, as for :func:`build_serving_model`.
        roi: Where the field of view is cut, as for :func:`build_serving_model`.

    Returns:
        A function from raw int16 ``[B, H, W]``, pixel spacing ``[B, 2]`` and optionally
        ``roi_centre_mm`` ``[B, 2]`` (as the serving model takes it) to numpy
        ``{"probabilities", "mask"}``.
    """
    _check_roi(roi, spacing_mm)
    pre = Preprocess(image_size, normalization, spacing_mm, dtype="float32")
    post = RestoreSize(class_id, spacing_mm, dtype="float32")
    spread, gather = AugmentedViews(tta), AverageViews(tta)
    locate = LocateLV(image_size, spacing_mm or 1.0, class_id, dtype="float32")
    chosen = ChosenCentre(dtype="float32")

    def run_networks(x):
        outputs = [ops.cast(net(x, training=False), "float32") for net in networks]
        return outputs[0] if len(outputs) == 1 else ops.mean(ops.stack(outputs), axis=0)

    def predict(raw, pixel_spacing, roi_centre_mm=None) -> dict:
        raw = ops.convert_to_tensor(raw, dtype="int16")
        pixel_spacing = ops.convert_to_tensor(pixel_spacing, dtype="float32")
        given = None if roi_centre_mm is None else np.asarray(roi_centre_mm, np.float32)
        if given is not None and spacing_mm is None:
            raise ValueError("roi_centre_mm needs a physical grid; this model resizes "
                             "whole images")
        centre = None
        # Eagerly, a located centre that every given one replaces is not computed.
        locating = roi == "localized" and (given is None or np.isnan(given).any())
        for _ in range(LOCALIZE_PASSES if locating else 0):
            view = pre(raw, pixel_spacing, centre)
            centre = locate(run_networks(view), centre)
        if given is not None:
            centre = chosen(raw, given, centre)
        probs = gather(run_networks(spread(pre(raw, pixel_spacing, centre))))
        lv, mask = post(probs, raw, pixel_spacing, centre)
        return {"probabilities": ops.convert_to_numpy(lv), "mask": ops.convert_to_numpy(mask)}

    return predict
