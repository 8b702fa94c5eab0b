"""Resampling between an image's stored grid and the network's physical grid, inside the
deployable model (``keras.ops`` only).

The network sees every image on one grid: ``size x size`` pixels of ``spacing`` mm, centred
on the image's centre (a field of view of ``size * spacing`` mm), or on a point given in
mm from it (the localized heart, see ``serving_layers.LocateLV``). An image of any matrix
and pixel spacing is resampled onto it and the network's probabilities back onto the
image's own grid. Both directions are one separable linear map per axis, a ``[batch, out,
in]`` weight matrix per image (each image has its own spacing):

- an output pixel's centre is mapped to the input axis, centres aligned;
- bilinear (triangle) weights, widened to the ratio of spacings when the output is
  coarser than the input, so that shrinking averages instead of aliasing;
- rows renormalized (an output pixel just inside the input edge takes the edge value,
  as ``tf.image.resize`` does); an output pixel whose centre falls outside the input
  gets no weight at all: zero image (the normalized mean) on the network's side, zero
  probability of every class (so, no LV) on the image's side.

Written by hand: neither Keras nor TensorFlow has a resampling op that takes a per-image
scale and converts to TFLite and ONNX; two batched matrix products do. The training
pipeline (``data.pipeline``) computes the same weights in TensorFlow (tested equal).
"""

from __future__ import annotations

from keras import ops

EPS = 1e-12


def grid_weights(out_size, in_size, out_spacing, in_spacing, shift_mm=None):
    """Weights ``[batch, out, in]`` resampling one axis between centre-aligned grids.

    Args:
        out_size: Output pixels along the axis (int or scalar tensor).
        in_size: Input pixels along the axis (int or scalar tensor).
        out_spacing: Output pixel size, mm: ``[batch]`` or a scalar.
        in_spacing: Input pixel size, mm: ``[batch]`` or a scalar.
        shift_mm: Where the output grid's centre lies from the input grid's, mm:
            ``[batch]``; None: the centres coincide.

    Returns:
        float32 ``[batch, out, in]`` (``[1, out, in]`` when both spacings are scalars).
    """
    ratio = ops.reshape(ops.cast(out_spacing, "float32") / ops.cast(in_spacing, "float32"),
                        (-1, 1, 1))
    n_out = ops.cast(out_size, "float32")
    n_in = ops.cast(in_size, "float32")
    i = ops.reshape(ops.cast(ops.arange(out_size), "float32"), (1, -1, 1))
    j = ops.reshape(ops.cast(ops.arange(in_size), "float32"), (1, 1, -1))
    # Input coordinate (pixel-centre units) of each output pixel's centre.
    centre = n_in / 2 - 0.5 + (i + 0.5 - n_out / 2) * ratio
    if shift_mm is not None:
        shift = ops.cast(shift_mm, "float32") / ops.cast(in_spacing, "float32")
        centre = centre + ops.reshape(shift, (-1, 1, 1))
    width = ops.maximum(ratio, 1.0)
    weights = ops.relu(1.0 - ops.abs(j - centre) / width)
    inside = ops.cast(ops.logical_and(centre >= -0.5, centre <= n_in - 0.5), "float32")
    total = ops.sum(weights, axis=-1, keepdims=True)
    return weights * inside / ops.maximum(total, EPS)


def resample(images, rows, cols):
    """Applies per-image row and column weights to ``[B, H, W, C]`` images.

    Args:
        images: ``[B, H, W, C]``.
        rows: ``[B, H_out, H]`` from :func:`grid_weights`.
        cols: ``[B, W_out, W]``.

    Returns:
        ``[B, H_out, W_out, C]``.
    """
    # No broadcasting of the batch: spacings for fewer images than given must fail,
    # never be reused for the others.
    return ops.einsum("bhs,bstc,bwt->bhwc", rows, images, cols)


def to_grid(images, pixel_spacing, size: int, spacing, centre_mm=None):
    """Images on their stored grids -> the network's ``size x size`` grid.

    Args:
        images: float ``[B, H, W, C]``.
        pixel_spacing: ``[B, 2]`` (row, column) mm of the stored images.
        size: The grid's pixels per side.
        spacing: The grid's pixel size, mm (a number, or ``[B]`` per image).
        centre_mm: ``[B, 2]`` where the grid's centre lies from each image's centre
            (row, column, mm); None: on it.

    Returns:
        float32 ``[B, size, size, C]``.
    """
    shape = ops.shape(images)
    pixel_spacing = ops.cast(pixel_spacing, "float32")
    row_shift, col_shift = ((None, None) if centre_mm is None
                            else (centre_mm[:, 0], centre_mm[:, 1]))
    rows = grid_weights(size, shape[1], spacing, pixel_spacing[:, 0], row_shift)
    cols = grid_weights(size, shape[2], spacing, pixel_spacing[:, 1], col_shift)
    return resample(ops.cast(images, "float32"), rows, cols)


def from_grid(values, pixel_spacing, height, width, spacing, centre_mm=None):
    """Values on the network's grid -> each image's stored ``height x width`` grid.

    Args:
        values: float ``[B, S, S, C]`` (class probabilities).
        pixel_spacing: ``[B, 2]`` (row, column) mm of the stored images.
        height: Stored rows (int or scalar tensor).
        width: Stored columns.
        spacing: The grid's pixel size, mm (a number, or ``[B]`` per image).
        centre_mm: As for :func:`to_grid`.

    Returns:
        float32 ``[B, height, width, C]``; zero outside the grid's field of view.
    """
    pixel_spacing = ops.cast(pixel_spacing, "float32")
    # The image's centre seen from the grid's: the opposite shift.
    row_shift, col_shift = ((None, None) if centre_mm is None
                            else (-centre_mm[:, 0], -centre_mm[:, 1]))
    rows = grid_weights(height, values.shape[1], pixel_spacing[:, 0], spacing, row_shift)
    cols = grid_weights(width, values.shape[2], pixel_spacing[:, 1], spacing, col_shift)
    return resample(ops.cast(values, "float32"), rows, cols)
