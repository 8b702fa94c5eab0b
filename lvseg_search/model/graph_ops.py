"""Graph operations of the deployable model, in ``keras.ops`` only, so that each one
converts to every exported format (SavedModel, TFLite, ONNX): the LV's arg-max mask,
a bilinear resize to a size known at run time, connected regions and convex hulls."""

from __future__ import annotations

from keras import ops

from lvseg_search.model.postprocess import HULL_TOLERANCE, hull_directions

NORMALIZATIONS = ("zscore", "minmax", "percentile")
EPS = 1e-6  # the same epsilon as the training pipeline's normalization


def per_image_spacing(pixel_spacing, raw):
    """The spacing as ``[batch, 2]``: a reshape that fails inside the graph when the
    spacing holds another number of values than two per image (a SavedModel signature
    checks the dtype, not the shape; where the graph knows the last axis is 2, as from
    the signature, only the number of rows is checked at run time)."""
    return ops.reshape(ops.cast(pixel_spacing, "float32"), (ops.shape(raw)[0], 2))


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


def label_map(probabilities):
    """Class ids ``uint8 [B, H, W]`` of class probabilities ``[B, H, W, C]``: the
    arg-max (the higher class at a tie, as :func:`lv_mask` gives the LV a tie with the
    background), by comparisons (see :func:`lv_mask`); 0 where every class is 0."""
    top = ops.max(probabilities, axis=-1, keepdims=True)
    winner = ops.logical_and(ops.greater_equal(probabilities, top), ops.greater(top, 0.0))
    ids = ops.reshape(ops.arange(probabilities.shape[-1], dtype="int32"), (1, 1, 1, -1))
    return ops.cast(ops.max(ops.where(winner, ids, 0), axis=-1), "uint8")


def per_contour(labels, classes, step, others: bool = False):
    """``postprocess.per_contour`` in graph ops: ``step`` (binary uint8 ``[B, H, W]`` ->
    same) applied to the endocardial and epicardial regions of label maps ``[B, H, W]``,
    the myocardium the ring between them.

    The regions are stacked along the batch axis and stepped at once: one labelling
    loop in the graph instead of one per region, which halves what every exported
    format converts and runs.

    Args:
        labels: Class ids ``uint8 [B, H, W]``.
        classes: ``classes.Classes``.
        step: The binary step (:func:`largest_region`, :func:`convex_hull`).
        others: Apply ``step`` to the other classes too.
    """
    labels = ops.cast(labels, "int32")
    endo = ops.equal(labels, classes.blood_pool)
    inside = endo
    if classes.has_myocardium:
        inside = ops.logical_or(inside, ops.equal(labels, classes.myocardium))
    rest = [c for c in range(1, classes.count) if c not in classes.epicardial]
    regions = [endo, inside] + ([ops.equal(labels, c) for c in rest] if others else [])
    shape = ops.shape(labels)
    stacked = ops.concatenate([ops.cast(r, "uint8") for r in regions], axis=0)
    stepped = ops.reshape(ops.greater(step(stacked), 0),
                          (len(regions), shape[0], shape[1], shape[2]))
    endo = stepped[0]
    epi = ops.logical_or(stepped[1], endo)
    out = ops.zeros_like(labels)
    for k, c in enumerate(rest):
        region = stepped[2 + k] if others else ops.equal(labels, c)
        out = ops.where(ops.logical_and(region, ops.logical_not(epi)), c, out)
    if classes.has_myocardium:
        out = ops.where(epi, classes.myocardium, out)
    return ops.cast(ops.where(endo, classes.blood_pool, out), "uint8")


def interpolation_matrix(out_size, in_size: int):
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
    rows = interpolation_matrix(height, images.shape[1])
    cols = interpolation_matrix(width, images.shape[2])
    return ops.einsum("hs,bstc,wt->bhwc", rows, images, cols)


# Doublings of the run-length scan in one labelling step: each step carries a label up
# to 2**RUN_DOUBLINGS - 1 pixels along a row and then a column of foreground. Measured on
# 16 speckled 256 x 256 masks (the worst case: foreground near the percolation density,
# as a barely trained network gives), 3 halves the time of a one-pixel step; more
# doublings cost more per step than the steps they save.
RUN_DOUBLINGS = 3


def _shifted(x, by: int, axis: int, fill, forward: bool):
    """``x`` moved ``by`` pixels along ``axis`` (1 rows, 2 columns) of ``[B, H, W]``,
    forward (towards higher indices) or back, filled with ``fill``."""
    pad = [(0, 0), (0, 0), (0, 0)]
    pad[axis] = (by, 0) if forward else (0, by)
    cut = [slice(None)] * 3
    cut[axis] = slice(None, -by) if forward else slice(by, None)
    return ops.pad(x, pad, constant_values=fill)[tuple(cut)]


def _run_minimum(labels, foreground, axis: int, background):
    """Each foreground pixel's smallest label within ``2**RUN_DOUBLINGS - 1`` pixels
    along ``axis``, over unbroken foreground only (a scan by doubling both ways)."""
    for forward in (True, False):
        # linked: the pixels from here back to ``by`` away are all foreground.
        linked = ops.logical_and(foreground, _shifted(foreground, 1, axis, False, forward))
        for k in range(RUN_DOUBLINGS):
            by = 2 ** k
            labels = ops.where(linked, ops.minimum(
                labels, _shifted(labels, by, axis, background, forward)), labels)
            if k + 1 < RUN_DOUBLINGS:
                linked = ops.logical_and(linked, _shifted(linked, by, axis, False, forward))
    return labels


def region_labels(binary):
    """Labels the 4-connected regions of binary masks.

    Every foreground pixel starts with its own flat index and takes the smallest index
    within a few pixels of unbroken foreground along its row and then its column, until
    nothing changes; in the same step it also takes the label of the pixel its label
    points to (pointer jumping: a label is always the index of a pixel of the same
    region), so a compact region settles in a few steps, not in as many as it is long.
    (scipy's and scikit-image's labelling are sequential; no library has one in graph
    ops that converts to every format, hence this one.)

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
        labels = _run_minimum(labels, foreground, 1, n)
        labels = ops.reshape(_run_minimum(labels, foreground, 2, n), (batch, -1))
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
