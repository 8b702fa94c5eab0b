"""``tf.data`` input pipeline over shard files: parse -> normalize -> resize -> cache
-> shuffle -> batch -> augment (per image, vectorized over the batch) -> prefetch.
Deterministic for a given seed."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from lvseg_search._tf import tf
from lvseg_search.data import manifest as manifest_mod
from lvseg_search.data import shards
from lvseg_search.data.manifest import PreparedData
from lvseg_search.errors import UserError

NORMALIZATIONS = ("zscore", "minmax", "percentile")


@dataclass(frozen=True)
class PipelineConfig:
    """How images become training batches.

    Attributes:
        image_size: Resize to this many rows and columns; None keeps the stored size.
        normalization: Per-image normalization, one of ``NORMALIZATIONS``.
        batch_size: Images per batch.
        augment: Apply random flips, rotations, scales and intensity changes.
        max_rotation_deg: Largest rotation, degrees. Any, by default: short-axis views
            come turned differently from one scanner or patient to the next (the real
            subset's SCD0000101 against the other two); nnU-Net's 2-D default too.
        max_scale: Largest relative zoom in or out (hearts and fields of view differ in
            size; about nnU-Net's range).
        max_shift: Largest translation, as a fraction of the image size.
        intensity: Largest relative gain and offset change.
        cache: Cache normalized, resized images in memory after the first epoch.
        shuffle: Shuffle examples each epoch.
        shuffle_buffer: Shuffle buffer size.
        seed: Seed for shuffling and augmentation.
        drop_remainder: Drop a last, smaller batch (keeps every replica of a mirrored
            model fed).
    """

    image_size: int | None = None
    normalization: str = "zscore"
    batch_size: int = 8
    augment: bool = False
    max_rotation_deg: float = 180.0
    max_scale: float = 0.25
    max_shift: float = 0.0
    intensity: float = 0.1
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


def _prepare(example, config: PipelineConfig):
    t = tf()
    image = _normalize(example["image"], config.normalization)[..., None]
    mask = example["mask"][..., None]
    if config.image_size:
        size = [config.image_size, config.image_size]
        image = t.image.resize(image, size, method="bilinear")
        mask = t.cast(t.image.resize(mask, size, method="nearest"), t.uint8)
    return image, mask


def _augment(images, masks, rand, config: PipelineConfig):
    """Augments a whole batch at once (one vectorized warp), each image with its own draw."""
    t = tf()
    seeds = t.random.experimental.stateless_split(
        t.stack([rand, t.constant(config.seed, t.int64)]), 8)
    b = t.shape(images)[0]

    def u(i, lo, hi, shape=None):
        return t.random.stateless_uniform(shape if shape is not None else [b], seeds[i], lo, hi)

    theta = u(2, -1.0, 1.0) * config.max_rotation_deg * math.pi / 180
    scale = 1.0 + u(3, -config.max_scale, config.max_scale)
    h, w = t.shape(images)[1], t.shape(images)[2]
    cy, cx = (t.cast(h, t.float32) - 1) / 2, (t.cast(w, t.float32) - 1) / 2
    # Output pixel -> input pixel: rotate by -theta and shrink by 1/scale about the centre.
    a0, a1 = t.cos(theta) / scale, t.sin(theta) / scale
    b0, b1 = -t.sin(theta) / scale, t.cos(theta) / scale
    a2, b2 = cx - a0 * cx - a1 * cy, cy - b0 * cx - b1 * cy
    # Then a shift: the LV is not always at the same place in the field of view.
    a2 += u(6, -config.max_shift, config.max_shift) * t.cast(w, t.float32)
    b2 += u(7, -config.max_shift, config.max_shift) * t.cast(h, t.float32)
    # Flips are folded into the same transform (x -> w-1-x, y -> h-1-y): the warp is the
    # costly op on CPU, so each image is resampled once.
    sx = t.where(u(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
    sy = t.where(u(1, 0.0, 1.0) < 0.5, -1.0, 1.0)
    tx, ty = (1 - sx) * cx, (1 - sy) * cy
    zeros = t.zeros_like(a0)
    transforms = t.stack([a0 * sx, a1 * sy, a0 * tx + a1 * ty + a2,
                          b0 * sx, b1 * sy, b0 * tx + b1 * ty + b2, zeros, zeros], axis=1)

    def warp(x, interpolation):
        return t.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transforms, output_shape=t.stack([h, w]),
            fill_value=0.0, interpolation=interpolation, fill_mode="NEAREST")

    images = warp(images, "BILINEAR")
    masks = t.cast(warp(t.cast(masks, t.float32), "NEAREST"), t.uint8)
    gain = 1.0 + u(4, -config.intensity, config.intensity, [b, 1, 1, 1])
    offset = u(5, -config.intensity, config.intensity, [b, 1, 1, 1])
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
                        "sizes; set --image-size")
    files = []
    for pid in patients:
        path = data.shard(pid)
        shards.check_shard(path)
        files.append(path)
    return files
