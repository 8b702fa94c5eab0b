"""``tf.data`` input pipeline over shard files: parse -> normalize -> resample onto the
network's grid -> cache -> shuffle -> batch -> augment (per image, vectorized over the
batch) -> prefetch. Deterministic for a given seed.

The network's grid is physical: ``image_size`` pixels of ``spacing_mm`` per side,
centred on each image's centre, whatever the image's matrix and pixel spacing; the
deployable model resamples with the same weights (``model.resample``, tested equal).
Masks are resampled as one-hot class maps and arg-maxed, so that a class keeps its
area in mm whatever the ratio of spacings. ``spacing_mm=None`` resizes whole images
instead (``--spacing none``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lvseg_search._tf import tf
from lvseg_search.classes import IGNORE
from lvseg_search.data import manifest as manifest_mod
from lvseg_search.data import shards
from lvseg_search.data.augmentation import (
    BLUR_SIGMA_PX,
    BRIGHTNESS_RANGE,
    CONTRAST_RANGE,
    GAMMA_RANGE,
    LOW_RESOLUTION_ZOOM,
    NOISE_VARIANCE,
    Augmentation,
)
from lvseg_search.data.manifest import PreparedData
from lvseg_search.errors import UserError

NORMALIZATIONS = ("zscore", "minmax", "percentile")
# Classes a mask may hold (background, blood pool, myocardium, a data set's others;
# ``prepare`` refuses more).
MAX_CLASSES = 8


@dataclass(frozen=True)
class PipelineConfig:
    """How images become training batches.

    Attributes:
        image_size: The network's rows and columns; None keeps the stored size (with no
            ``spacing_mm`` only).
        spacing_mm: The network grid's pixel size, mm; None resizes whole images to
            ``image_size`` whatever their spacing.
        normalization: Per-image normalization, one of ``NORMALIZATIONS``.
        batch_size: Images per batch.
        augment: Apply random flips and the ``augmentation``.
        augmentation: What the augmentation changes, and how much (only rotation,
            zoom and gain by default; the search's own defaults are
            ``Augmentation()``).
        cache: Cache normalized, resized images in memory after the first epoch.
        shuffle: Shuffle examples each epoch.
        shuffle_buffer: Shuffle buffer size.
        seed: Seed for shuffling and augmentation.
        drop_remainder: Drop a last, smaller batch (keeps every replica of a mirrored
            model fed).
    """

    image_size: int | None = None
    spacing_mm: float | None = None
    normalization: str = "zscore"
    batch_size: int = 8
    augment: bool = False
    augmentation: Augmentation = Augmentation.geometric()
    cache: bool = True
    shuffle: bool = False
    shuffle_buffer: int = 2048
    seed: int = 0
    drop_remainder: bool = False

    def training(self) -> PipelineConfig:
        """The same configuration with shuffling and augmentation on."""
        return replace(self, augment=True, shuffle=True)


def _normalize(image, method: str):
    t = tf()
    x = t.cast(image, t.float32)
    if method == "zscore":
        mean, var = t.nn.moments(x, axes=[0, 1])
        return (x - mean) / (t.sqrt(var) + 1e-6)
    if method == "minmax":
        lo, hi = t.reduce_min(x), t.reduce_max(x)
        return (x - lo) / (hi - lo + 1e-6)
    flat = t.sort(t.reshape(x, [-1]))
    n = t.cast(t.size(flat) - 1, t.float32)
    lo = t.gather(flat, t.cast(t.round(0.01 * n), t.int32))
    hi = t.gather(flat, t.cast(t.round(0.99 * n), t.int32))
    return (t.clip_by_value(x, lo, hi) - lo) / (hi - lo + 1e-6)


def grid_weights(out_size, in_size, out_spacing, in_spacing, shift_mm=None):
    """``model.resample.grid_weights`` in TensorFlow (the pipeline may not depend on the
    model stage): weights ``[batch, out, in]`` resampling one axis between grids of the
    given pixel sizes (``[batch]`` or scalars), the output's centre ``shift_mm``
    (``[batch]``, None: 0) from the input's."""
    t = tf()
    ratio = t.reshape(t.cast(out_spacing, t.float32) / t.cast(in_spacing, t.float32),
                      [-1, 1, 1])
    n_out, n_in = t.cast(out_size, t.float32), t.cast(in_size, t.float32)
    i = t.reshape(t.cast(t.range(out_size), t.float32), [1, -1, 1])
    j = t.reshape(t.cast(t.range(in_size), t.float32), [1, 1, -1])
    centre = n_in / 2 - 0.5 + (i + 0.5 - n_out / 2) * ratio
    if shift_mm is not None:
        shift = t.cast(shift_mm, t.float32) / t.cast(in_spacing, t.float32)
        centre += t.reshape(shift, [-1, 1, 1])
    width = t.maximum(ratio, 1.0)
    weights = t.nn.relu(1.0 - t.abs(j - centre) / width)
    inside = t.cast(t.logical_and(centre >= -0.5, centre <= n_in - 0.5), t.float32)
    total = t.reduce_sum(weights, axis=-1, keepdims=True)
    return weights * inside / t.maximum(total, 1e-12)


def _weights(shape, pixel_spacing, size: int, spacing_mm: float, centre_mm=None):
    t = tf()
    pixel_spacing = t.cast(pixel_spacing, t.float32)
    rows, cols = (None, None) if centre_mm is None else (centre_mm[:, 0], centre_mm[:, 1])
    return (grid_weights(size, shape[1], spacing_mm, pixel_spacing[:, 0], rows),
            grid_weights(size, shape[2], spacing_mm, pixel_spacing[:, 1], cols))


def grid_masks(masks, pixel_spacing, size: int, spacing_mm: float, centre_mm=None):
    """Resamples class masks onto the network's grid: each class's one-hot map as an
    image, then the arg-max (so a class keeps its area in mm at any ratio of spacings).

    Args:
        masks: Class labels ``[B, H, W, 1]`` (any integer type).
        pixel_spacing: ``[B, 2]`` (row, column) mm.
        size: The grid's pixels per side.
        spacing_mm: The grid's pixel size.
        centre_mm: ``[B, 2]`` where the grid's centre lies from each image's centre
            (row, column, mm); None: on it.

    Returns:
        uint8 ``[B, size, size, 1]``; background outside an image's field of view.
        Unlabelled pixels (``classes.IGNORE``) resample as one more class and keep
        their label.
    """
    t = tf()
    rows, cols = _weights(t.shape(masks), pixel_spacing, size, spacing_mm, centre_mm)
    labels = t.cast(masks[..., 0], t.int32)
    ignored = t.equal(labels, IGNORE)
    # As many maps as the classes the masks hold, and one more for unlabelled pixels:
    # the resampling's cost grows with them.
    slot = t.reduce_max(t.where(ignored, 0, labels)) + 1
    onehot = t.one_hot(t.where(ignored, slot, labels), slot + 1, dtype=t.float32)
    fractions = t.einsum("bhs,bstc,bwt->bhwc", rows, onehot, cols)
    out = t.cast(t.argmax(fractions, axis=-1), t.int32)
    return t.cast(t.where(t.equal(out, slot), IGNORE, out), t.uint8)[..., None]


def grid_images(images, pixel_spacing, size: int, spacing_mm: float, centre_mm=None):
    """Resamples images ``float32 [B, H, W, 1]`` onto the network's grid (bilinear,
    antialiased when shrinking); 0 outside an image's field of view.

    Args:
        images: float32 ``[B, H, W, 1]``.
        pixel_spacing: ``[B, 2]`` (row, column) mm.
        size: The grid's pixels per side.
        spacing_mm: The grid's pixel size.
        centre_mm: As for :func:`grid_masks`.
    """
    t = tf()
    rows, cols = _weights(t.shape(images), pixel_spacing, size, spacing_mm, centre_mm)
    return t.einsum("bhs,bstc,bwt->bhwc", rows, images, cols)


def offset_margin(config: PipelineConfig) -> int:
    """Pixels kept on each side of a training view beyond the network's field of view,
    for the LV-centred views' random offsets (``Augmentation.offset_mm``); 0 without them."""
    if not (config.augment and config.spacing_mm and config.augmentation.offset_mm > 0):
        return 0
    return math.ceil(config.augmentation.offset_mm / config.spacing_mm)


def lv_centre_mm(mask, pixel_spacing, class_id: int = 1):
    """The centroid of a mask's LV class, mm from the image's centre (row, column).

    Args:
        mask: Class labels ``[H, W]``.
        pixel_spacing: ``[2]`` (row, column) mm.
        class_id: The LV class.

    Returns:
        float32 ``[2]``; zeros when the mask holds no LV.
    """
    # By hand (scipy's ndimage.center_of_mass is NumPy): it runs inside the tf.data
    # graph, once per example before the cache.
    t = tf()
    lv = t.cast(t.equal(t.cast(mask, t.int32), class_id), t.float32)
    count = t.maximum(t.reduce_sum(lv), 1.0)
    shape = t.cast(t.shape(lv), t.float32)
    rows = t.cast(t.range(t.shape(lv)[0]), t.float32) - (shape[0] / 2 - 0.5)
    cols = t.cast(t.range(t.shape(lv)[1]), t.float32) - (shape[1] / 2 - 0.5)
    centre = t.stack([t.reduce_sum(lv * rows[:, None]), t.reduce_sum(lv * cols[None, :])])
    return centre / count * t.cast(pixel_spacing, t.float32)


def _prepare(example, config: PipelineConfig):
    t = tf()
    image = _normalize(example["image"], config.normalization)[..., None]
    mask = example["mask"][..., None]
    if config.spacing_mm:
        spacing = example["pixel_spacing_mm"][None]
        size, centre = config.image_size, None
        margin = offset_margin(config)
        if margin:
            # A wider view around the LV: the augmentation cuts the network's field of
            # view from it at a random offset.
            size += 2 * margin
            centre = lv_centre_mm(example["mask"], example["pixel_spacing_mm"])[None]
        return (grid_images(image[None], spacing, size, config.spacing_mm, centre)[0],
                grid_masks(mask[None], spacing, size, config.spacing_mm, centre)[0])
    if config.image_size:
        size = [config.image_size, config.image_size]
        image = t.image.resize(image, size, method="bilinear")
        mask = t.cast(t.image.resize(mask, size, method="nearest"), t.uint8)
    return image, mask


_BLUR_RADIUS = 3  # pixels: covers 3 sigma of the widest blur


def _warp(t, images, transforms, interpolation: str, output_shape=None):
    """One projective warp of every image by its own transform (output -> input), to
    ``output_shape`` (rows, columns; default: the input's)."""
    if output_shape is None:
        output_shape = t.shape(images)[1:3]
    return t.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=output_shape,
        fill_value=0.0, interpolation=interpolation, fill_mode="NEAREST")


def _scaling(t, factor):
    """Transforms ``[B, 8]`` mapping output pixel ``p`` to input ``p * factor``."""
    zeros = t.zeros_like(factor)
    return t.stack([factor, zeros, zeros, zeros, factor, zeros, zeros, zeros], axis=1)


def _blur(t, images, sigma):
    """Separable Gaussian blur, each image with its own sigma (0: unchanged): the batch
    becomes the channels of one depthwise convolution."""
    offsets = t.cast(t.range(-_BLUR_RADIUS, _BLUR_RADIUS + 1), t.float32)
    safe = t.maximum(sigma, 1e-3)[:, None]
    kernel = t.exp(-0.5 * t.square(offsets[None, :] / safe))
    kernel = kernel / t.reduce_sum(kernel, axis=1, keepdims=True)  # [B, K]
    x = t.transpose(images, [3, 1, 2, 0])  # [1, H, W, B]
    along_rows = t.transpose(kernel)[:, None, :, None]  # [K, 1, B, 1]
    along_cols = t.transpose(kernel)[None, :, :, None]  # [1, K, B, 1]
    x = t.nn.depthwise_conv2d(x, along_rows, [1, 1, 1, 1], "SAME")
    x = t.nn.depthwise_conv2d(x, along_cols, [1, 1, 1, 1], "SAME")
    return t.transpose(x, [3, 1, 2, 0])


def _augment(images, masks, rand, config: PipelineConfig):
    """Augments a whole batch at once (vectorized), each image with its own draw: one
    spatial warp (flips, rotation, zoom, shift; on the physical grid, so a zoom is a
    change of size in mm), then, each with its probability, noise, blur, brightness,
    contrast, low resolution and gamma (nnU-Net's order), then gain and offset. Views
    cut wider for ``Augmentation.offset_mm`` come out at ``image_size``, moved by the offset."""
    t = tf()
    aug = config.augmentation
    seeds = t.random.experimental.stateless_split(
        t.stack([rand, t.constant(config.seed, t.int64)]), 24)
    b = t.shape(images)[0]

    def u(i, lo, hi, shape=None):
        return t.random.stateless_uniform(shape if shape is not None else [b], seeds[i], lo, hi)

    def chosen(i, probability):
        return u(i, 0.0, 1.0) < probability

    def per_image(v):
        return t.reshape(v, [-1, 1, 1, 1])

    theta = u(2, -1.0, 1.0) * aug.rotation_deg * math.pi / 180
    scale = 1.0 + u(3, -aug.scale, aug.scale)
    margin = offset_margin(config)
    h_in, w_in = t.shape(images)[1], t.shape(images)[2]
    h, w = (h_in, w_in) if not margin else (config.image_size, config.image_size)
    cy, cx = (t.cast(h, t.float32) - 1) / 2, (t.cast(w, t.float32) - 1) / 2
    cy_in, cx_in = (t.cast(h_in, t.float32) - 1) / 2, (t.cast(w_in, t.float32) - 1) / 2
    # Output pixel -> input pixel: rotate by -theta and shrink by 1/scale about the centre.
    a0, a1 = t.cos(theta) / scale, t.sin(theta) / scale
    b0, b1 = -t.sin(theta) / scale, t.cos(theta) / scale
    a2, b2 = cx_in - a0 * cx - a1 * cy, cy_in - b0 * cx - b1 * cy
    # Then a shift: the LV is not always at the same place in the field of view.
    a2 += u(6, -aug.shift, aug.shift) * t.cast(w, t.float32)
    b2 += u(7, -aug.shift, aug.shift) * t.cast(h, t.float32)
    if margin:
        # Its own stream (the 24th split was unused), so that runs without offsets
        # draw exactly the augmentations they drew before.
        offset = t.random.stateless_uniform([b, 2], seeds[23], -1.0, 1.0)
        offset *= aug.offset_mm / config.spacing_mm
        a2 += offset[:, 1]
        b2 += offset[:, 0]
    # Flips are folded into the same transform (x -> w-1-x, y -> h-1-y): the warp is the
    # costly op on CPU, so each image is resampled once.
    sx = t.where(u(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
    sy = t.where(u(1, 0.0, 1.0) < 0.5, -1.0, 1.0)
    tx, ty = (1 - sx) * cx, (1 - sy) * cy
    zeros = t.zeros_like(a0)
    transforms = t.stack([a0 * sx, a1 * sy, a0 * tx + a1 * ty + a2,
                          b0 * sx, b1 * sy, b0 * tx + b1 * ty + b2, zeros, zeros], axis=1)
    images = _warp(t, images, transforms, "BILINEAR", [h, w])
    masks = t.cast(_warp(t, t.cast(masks, t.float32), transforms, "NEAREST", [h, w]),
                   t.uint8)

    if aug.noise > 0:
        std = t.sqrt(u(8, *NOISE_VARIANCE)) * t.cast(chosen(9, aug.noise), t.float32)
        images += per_image(std) * t.random.stateless_normal(t.shape(images), seeds[10])
    if aug.blur > 0:
        sigma = u(11, *BLUR_SIGMA_PX) * t.cast(chosen(12, aug.blur), t.float32)
        images = _blur(t, images, sigma)
    if aug.brightness > 0:
        factor = t.where(chosen(13, aug.brightness), u(14, *BRIGHTNESS_RANGE), 1.0)
        images *= per_image(factor)
    if aug.contrast > 0:
        factor = t.where(chosen(15, aug.contrast), u(16, *CONTRAST_RANGE), 1.0)
        mean = t.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
        lo = t.reduce_min(images, axis=[1, 2, 3], keepdims=True)
        hi = t.reduce_max(images, axis=[1, 2, 3], keepdims=True)
        images = t.clip_by_value((images - mean) * per_image(factor) + mean, lo, hi)
    if aug.low_resolution > 0:
        zoom = t.where(chosen(17, aug.low_resolution), u(18, *LOW_RESOLUTION_ZOOM), 1.0)
        coarse = _warp(t, images, _scaling(t, 1.0 / zoom), "NEAREST")
        images = _warp(t, coarse, _scaling(t, zoom), "BILINEAR")
    if aug.gamma > 0:
        # Half the draws darken, half brighten (nnU-Net), on the image's own range, then
        # its mean and spread are restored.
        low, high = GAMMA_RANGE
        gamma = t.where(u(19, 0.0, 1.0) < 0.5, u(20, low, 1.0), u(21, 1.0, high))
        gamma = t.where(chosen(22, aug.gamma), gamma, 1.0)
        mean, var = t.nn.moments(images, axes=[1, 2, 3], keepdims=True)
        lo = t.reduce_min(images, axis=[1, 2, 3], keepdims=True)
        span = t.reduce_max(images, axis=[1, 2, 3], keepdims=True) - lo + 1e-6
        curved = t.pow((images - lo) / span, per_image(gamma)) * span + lo
        new_mean, new_var = t.nn.moments(curved, axes=[1, 2, 3], keepdims=True)
        images = (curved - new_mean) / t.sqrt(new_var + 1e-12) * t.sqrt(var) + mean
    gain = 1.0 + u(4, -aug.intensity, aug.intensity, [b, 1, 1, 1])
    offset = u(5, -aug.intensity, aug.intensity, [b, 1, 1, 1])
    return images * gain + offset, masks


# One parallel map call per core: the maps are pure arithmetic on images.
_PARALLEL_CALLS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)


def prepared_examples(files: Sequence[Path], config: PipelineConfig,
                      n_examples: int | None = None):
    """The examples of ``files`` normalized and resized, cached in memory after the first
    pass (when ``config.cache``): the part of the pipeline worth keeping between fits.

    Args:
        files: Shard files.
        config: Pipeline settings.
        n_examples: Number of examples in ``files`` when known (from the manifest); it
            lets Keras know the epoch length without a counting pass.

    Raises:
        UserError: Unknown normalization or empty file list.
    """
    t = tf()
    if config.normalization not in NORMALIZATIONS:
        raise UserError(f"--normalization: unknown {config.normalization!r}; choose one of "
                        f"{', '.join(NORMALIZATIONS)}")
    if not files:
        raise UserError("no shard files given to the input pipeline")
    ds = shards.dataset(list(files)).map(
        t.autograph.experimental.do_not_convert(lambda ex: _prepare(ex, config)),
        num_parallel_calls=_PARALLEL_CALLS, deterministic=True)
    if n_examples is not None:
        ds = ds.apply(t.data.experimental.assert_cardinality(n_examples))
    return ds.cache() if config.cache else ds


def make_batches(examples, config: PipelineConfig, repeat: bool = False):
    """Shuffled, batched, augmented batches of prepared examples.

    A new dataset's random streams (shuffling, augmentation) start from ``config.seed``
    while one dataset's later iterators continue them, so build one per ``fit`` from
    the same (cached) examples: each fit then sees the same batches, whatever ran
    before it in the process, and a fold trained again after a kill, in a fresh
    process or by another worker, sees exactly the batches it would have seen in one
    uninterrupted process.

    Args:
        examples: From :func:`prepared_examples`.
        config: Pipeline settings.
        repeat: Pass over the examples without end (each pass shuffled and augmented
            afresh); give Keras the epoch length as steps.
    """
    t = tf()
    ds = examples
    if config.shuffle:
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
    if config.augment:
        rand = t.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True)
        ds = t.data.Dataset.zip((ds, rand)).map(
            t.autograph.experimental.do_not_convert(
                lambda pair, r: _augment(pair[0], pair[1], r, config)),
            num_parallel_calls=_PARALLEL_CALLS, deterministic=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.prefetch(2)
    options = t.data.Options()
    options.deterministic = True
    # Fixed parallelism instead of AUTOTUNE: tf.data's autotuner runs its own
    # optimization thread, which on a few cores slowed training batches by 5-15% and
    # made every fit's end wait up to a second for the thread to stop (the search runs
    # hundreds of short fits).
    options.autotune.enabled = False
    return ds.with_options(options)


def make_dataset(files: Sequence[Path], config: PipelineConfig, n_examples: int | None = None,
                 repeat: bool = False):
    """Builds the batched dataset of ``(image float32 [B,H,W,1], mask uint8 [B,H,W,1])``:
    :func:`prepared_examples`, then :func:`make_batches`.

    Raises:
        UserError: Unknown normalization or empty file list.
    """
    return make_batches(prepared_examples(files, config, n_examples), config, repeat)


def batches_per_epoch(n_examples: int, config: PipelineConfig) -> int:
    """Batches in one pass over ``n_examples`` (the ``steps_per_epoch`` of a repeating
    dataset: Keras then keeps one iterator for a whole fit instead of two per epoch)."""
    full, rest = divmod(n_examples, config.batch_size)
    return full + (1 if rest and not config.drop_remainder else 0)


def patient_files(data: PreparedData, patients: Sequence[str],
                  config: PipelineConfig) -> list[Path]:
    """Shard files of ``patients`` in a prepared data folder, checked against its manifest.

    Use ``data.slices(patients)`` for their number of examples.

    Args:
        data: The prepared data folder (``manifest.open_data``).
        patients: Patient ids.
        config: The pipeline settings the files will be read with.

    Raises:
        UserError: A patient is unknown, a shard is bad, or image sizes differ and no
            image size is set.
    """
    if len(data.manifest["image_sizes"]) > 1 and not config.image_size:
        raise UserError(f"{data.root / manifest_mod.FILENAME}: images come in several "
                        "sizes; set --image-size (or use the physical grid)")
    files = []
    for pid in patients:
        path = data.shard(pid)
        shards.check_shard(path)
        files.append(path)
    return files
