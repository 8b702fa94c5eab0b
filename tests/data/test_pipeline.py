from dataclasses import replace

import numpy as np
import pytest

from lvseg_search.data.augmentation import Augmentation
from lvseg_search.data.manifest import open_data
from lvseg_search.data.pipeline import PipelineConfig, make_dataset, patient_files
from lvseg_search.errors import UserError

PATIENTS = ["SCD0000101", "SCD0000201", "SCD0000301"]


def _collect(ds):
    return [(x.numpy(), m.numpy()) for x, m in ds]


def test_batches_have_expected_shapes_and_labels(real_prepared):
    config = PipelineConfig(image_size=64, batch_size=8)
    files = patient_files(open_data(real_prepared), PATIENTS, config)
    batches = _collect(make_dataset(files, config))
    assert sum(x.shape[0] for x, _ in batches) == 56
    x, m = batches[0]
    assert x.shape == (8, 64, 64, 1) and x.dtype == np.float32
    assert m.shape == (8, 64, 64, 1) and m.dtype == np.uint8
    assert set(np.unique(np.concatenate([b[1].ravel() for b in batches]))) == {0, 1}


@pytest.mark.parametrize("method,check", [
    ("zscore", lambda x: abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-2),
    ("minmax", lambda x: x.min() >= -1e-6 and abs(x.max() - 1) < 1e-3),
    ("percentile", lambda x: x.min() >= -1e-6 and x.max() <= 1 + 1e-6),
])
def test_per_image_normalization(real_prepared, method, check):
    config = PipelineConfig(normalization=method, batch_size=4)
    x, _ = _collect(make_dataset(patient_files(open_data(real_prepared), PATIENTS[:1], config),
                                 config))[0]
    for image in x:
        assert check(image)


def test_seeded_training_pipeline_is_deterministic_and_varies_per_epoch(real_prepared):
    config = PipelineConfig(image_size=64, batch_size=8, seed=3).training()
    files = patient_files(open_data(real_prepared), PATIENTS, config)
    ds = make_dataset(files, config)
    epoch1, epoch2 = _collect(ds), _collect(ds)
    again = _collect(make_dataset(files, config))
    for (a, am), (b, bm) in zip(epoch1, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(epoch1, epoch2, strict=True))
    other = _collect(make_dataset(files, PipelineConfig(image_size=64, batch_size=8,
                                                        seed=4).training()))
    assert not np.array_equal(epoch1[0][0], other[0][0])


def test_augmentation_keeps_image_and_mask_aligned(real_prepared):
    """Bright blood pool stays under the (moved) mask after flips, rotation, scaling and
    shifts."""
    config = PipelineConfig(image_size=128, batch_size=56, seed=0, normalization="minmax",
                            augmentation=Augmentation(
                                rotation_deg=30, scale=0.2, shift=0.1, offset_mm=0.0,
                                gamma=0.0, contrast=0.0, brightness=0.0, noise=0.0, blur=0.0,
                                low_resolution=0.0)).training()
    files = patient_files(open_data(real_prepared), PATIENTS, config)
    x, m = _collect(make_dataset(files, config))[0]
    ratios = []
    for image, mask in zip(x[..., 0], m[..., 0], strict=True):
        if mask.sum() > 20:
            ratios.append(image[mask == 1].mean() / image[mask == 0].mean())
    assert len(ratios) > 40 and np.median(ratios) > 2.0


@pytest.mark.parametrize("shift", [0.0, 0.1])
def test_shifts_move_the_lv_by_at_most_max_shift(real_prepared, shift):
    """Flips keep the LV's distance from the image centre; only a shift changes it."""
    def distances(config):
        files = patient_files(open_data(real_prepared), PATIENTS, config)
        (_, masks), = _collect(make_dataset(files, config))
        out = []
        for mask in masks[..., 0]:
            rows, cols = np.nonzero(mask)
            out.append(np.hypot(rows.mean() - 63.5, cols.mean() - 63.5) if len(rows) else 0.0)
        return np.array(out)

    plain = PipelineConfig(image_size=128, batch_size=56, seed=0)
    moved = PipelineConfig(image_size=128, batch_size=56, seed=0, augment=True,
                           augmentation=replace(Augmentation.geometric(), rotation_deg=0.0,
                                                scale=0.0, intensity=0.0, shift=shift))
    change = np.abs(distances(moved) - distances(plain))
    if shift == 0.0:
        assert change.max() < 1.0
    else:
        assert np.median(change) > 1.0 and change.max() <= np.hypot(12.8, 12.8) + 1.0


def test_unknown_normalization_and_patient_are_refused(real_prepared):
    with pytest.raises(UserError, match="--normalization"):
        make_dataset([real_prepared / "SCD0000101.tfrecord"],
                     PipelineConfig(normalization="histeq"))
    with pytest.raises(UserError, match="NOBODY"):
        patient_files(open_data(real_prepared), ["NOBODY"], PipelineConfig())


def test_views_around_the_lv_move_it_by_at_most_the_offset_with_anatomy_around(real_prepared):
    """Training views cut around the expert LV at a random offset: the LV's centre lies
    within the offset of the view's centre, the offsets spread over their range, and
    what comes into view is the image, not padding (the warp repeats the edge pixels:
    runs of equal neighbours)."""
    spacing, size, offset = 1.5, 96, 30.0

    def views(**kw):
        aug = replace(Augmentation.geometric(), rotation_deg=0.0, scale=0.0, intensity=0.0,
                      **kw)
        config = PipelineConfig(image_size=size, spacing_mm=spacing, batch_size=56, seed=0,
                                augment=True, augmentation=aug)
        files = patient_files(open_data(real_prepared), PATIENTS, config)
        (x, m), = _collect(make_dataset(files, config))
        return x[..., 0], m[..., 0]

    x, m = views(offset_mm=offset)
    assert x.shape == (56, size, size) and m.shape == (56, size, size)
    centre = (size - 1) / 2
    moved = []
    for mask in m:
        rows, cols = np.nonzero(mask == 1)
        moved.append([(rows.mean() - centre) * spacing, (cols.mean() - centre) * spacing])
    moved = np.abs(np.array(moved))
    assert moved.max() <= offset + 2 * spacing
    assert np.percentile(moved, 90) > 0.6 * offset
    def repeated(images):
        return np.mean((images[:, 1:, 1:] == images[:, :-1, 1:])
                       | (images[:, 1:, 1:] == images[:, 1:, :-1]))

    # The same offsets as padding (max_shift) fill part of the view; from the image, not.
    padded, _ = views(shift=offset / (size * spacing))
    assert repeated(padded) > 0.05 and repeated(x) < 0.1 * repeated(padded)
    # Without the option, views stay centred on the image and come out at image_size.
    plain, plain_masks = views()
    assert plain.shape == (56, size, size)
