"""Test-time augmentation, largest region and convex hull, decided on out-of-fold
predictions."""

import numpy as np
import pytest

from lvseg_search.evaluate.decision import (
    POSTPROCESSING,
    TIE,
    choose,
    out_of_fold_table,
    table_text,
)
from lvseg_search.evaluate.scoring import PatientImages


def _patient(pid: str, seed: int, n: int = 3, notch: bool = False) -> PatientImages:
    """Slices with a bright LV disk and a smaller bright blob that is not LV; with
    ``notch``, a dark papillary muscle at the disk's edge that the expert's LV includes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    images, masks = [], []
    for i in range(n):
        cy, cx = 20 + rng.integers(-3, 4), 20 + rng.integers(-3, 4)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (7 + i) ** 2
        blob = (yy - 5) ** 2 + (xx - 34) ** 2 <= 16
        bright = disk | blob
        if notch:
            bright &= ~((abs(yy - cy) <= 1) & (xx >= cx + 3))
        image = 100 + rng.normal(0, 5, (40, 40)) + 900 * bright
        images.append(image.astype(np.int16))
        masks.append(disk.astype(np.uint8))
    return PatientImages(pid, np.stack(images), np.stack(masks), np.ones((n, 2)),
                         np.arange(n), np.zeros(n, int))


def _pixelwise_network():
    """LV wherever the normalized image is bright: flip-equivariant, and it finds the
    blob too."""
    import keras

    x = keras.Input((40, 40, 1))
    logits = keras.layers.Concatenate()([keras.ops.zeros_like(x), 4.0 * x - 2.0,
                                         keras.ops.zeros_like(x) - 10.0])
    return keras.Model(x, keras.layers.Softmax()(logits))


def test_largest_region_is_kept_when_it_helps_and_tta_that_changes_nothing_is_not():
    net = _pixelwise_network()
    folds = [(net, [_patient("A", 0)]), (net, [_patient("B", 1)])]
    table = out_of_fold_table(folds, 40, "zscore", 1.0)
    assert [(r["tta"], r["largest_region"], r["convex_hull"]) for r in table] == [
        (m, lr, hull) for m in ("none", "flips", "dihedral") for lr, hull in POSTPROCESSING]
    by = {(r["tta"], r["largest_region"]): r for r in table if not r["convex_hull"]}
    # The blob costs Dice without the largest region; with it every slice is right.
    assert by["none", True]["cv_dice"] > by["none", False]["cv_dice"] + 0.05
    assert by["none", True]["cv_dice"] > 0.95
    assert len(by["none", True]["dice_per_fold"]) == 2
    # A pixelwise network gives the same answer for every flip and turn.
    for lr in (False, True):
        assert by["dihedral", lr]["cv_dice"] == pytest.approx(by["none", lr]["cv_dice"],
                                                               abs=1e-6)
    # The disks are convex already: the hull adds nothing, so the cheaper setting wins.
    chosen = choose(table)
    assert (chosen["tta"], chosen["largest_region"], chosen["convex_hull"]) == (
        "none", True, False)
    # Forced settings: only the open choice is decided.
    forced = choose(table, largest_region=False)
    assert (forced["tta"], forced["largest_region"], forced["convex_hull"]) == (
        "none", False, False)
    assert choose(table, tta="dihedral")["largest_region"] is True
    assert choose(table, convex_hull=True)["largest_region"] is True
    assert "<- chosen" in table_text(table, chosen).splitlines()[2]


def test_the_convex_hull_is_kept_when_the_expert_drew_the_papillary_muscle_inside():
    net = _pixelwise_network()
    folds = [(net, [_patient("A", 0, notch=True)]), (net, [_patient("B", 1, notch=True)])]
    table = out_of_fold_table(folds, 40, "zscore", 1.0, modes=("none",))
    by = {(r["largest_region"], r["convex_hull"]): r["cv_dice"] for r in table}
    assert by[True, True] > by[True, False] + 0.02
    chosen = choose(table)
    assert (chosen["largest_region"], chosen["convex_hull"]) == (True, True)
    assert choose(table, convex_hull=False)["convex_hull"] is False


def _row(tta, lr, dice, hull=False):
    return {"roi": "centre", "tta": tta, "largest_region": lr, "convex_hull": hull,
            "cv_dice": dice, "cv_dice_std": 0.0, "apd_mm": 1.0, "good_contours_pct": 90.0}


def test_a_gain_below_the_tie_goes_to_the_cheaper_setting():
    base = 0.85
    table = [_row("none", False, base), _row("none", True, base + TIE / 2),
             _row("flips", False, base), _row("flips", True, base + 0.8 * TIE),
             _row("dihedral", False, base), _row("dihedral", True, base + 5 * TIE)]
    assert (choose(table)["tta"], choose(table)["largest_region"]) == ("dihedral", True)
    table[-1]["cv_dice"] = base + 0.9 * TIE  # now every gain is a tie
    assert (choose(table)["tta"], choose(table)["largest_region"]) == ("none", False)
    with pytest.raises(ValueError, match="no out-of-fold figures"):
        choose([r for r in table if r["tta"] == "none"], tta="flips")
    # The hull is one step more than the largest region alone: a tie keeps it out.
    rows = [_row("none", True, base), _row("none", True, base + 0.9 * TIE, hull=True)]
    assert choose(rows)["convex_hull"] is False
    rows[1]["cv_dice"] = base + 2 * TIE
    assert choose(rows)["convex_hull"] is True


def test_a_localized_field_of_view_wins_a_tie_and_loses_to_a_real_gain():
    rows = [{**_row("none", True, 0.850), "roi": "centre"},
            {**_row("none", True, 0.8495), "roi": "localized"}]
    assert choose(rows)["roi"] == "localized"
    rows[1]["cv_dice"] = 0.845
    assert choose(rows)["roi"] == "centre"
    assert choose(rows, roi="localized")["cv_dice"] == 0.845


def _shifting_network():
    """LV where the pixel one up and to the left is bright: its answers differ between
    flips and turns, so each test-time augmentation gives its own probabilities."""
    import keras

    x = keras.Input((40, 40, 1))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 0] = 1.0
    shift = keras.layers.Conv2D(1, 3, padding="same", use_bias=False,
                                kernel_initializer=keras.initializers.Constant(kernel))
    near = shift(x)
    logits = keras.layers.Concatenate()([keras.ops.zeros_like(x), 4.0 * near - 2.0 + 0.3 * x,
                                         keras.ops.zeros_like(x) - 10.0])
    return keras.Model(x, keras.layers.Softmax()(logits))


@pytest.mark.parametrize("roi", ["centre", "localized"])
def test_every_mode_from_one_pass_is_what_its_own_predictor_gives(roi):
    """The table's modes come from one network call on the dihedral views (and, for a
    localized field of view, shared locating passes): each mode's probabilities and
    masks are those of a predictor of that mode alone, study centre included."""
    from lvseg_search.evaluate.scoring import segment, segment_modes
    from lvseg_search.model.serving import make_modes_predictor, make_predictor
    from lvseg_search.model.tta import TTA_MODES

    net = _shifting_network()
    patient = _patient("A", 3, n=4)
    shared = make_modes_predictor([net], 40, "zscore", 1.0, TTA_MODES, roi=roi)
    together = segment_modes(shared, patient.images, patient.spacing_mm, TTA_MODES,
                             batch_size=3, study_roi=roi == "localized")
    probabilities = []
    for mode in TTA_MODES:
        alone = segment(make_predictor([net], 40, "zscore", 1.0, tta=mode, roi=roi),
                        patient.images, patient.spacing_mm, batch_size=3,
                        largest_region=False, study_roi=roi == "localized")
        np.testing.assert_allclose(np.stack(together[mode][0]), np.stack(alone[0]),
                                   atol=1e-5)
        assert all((a == b).all() for a, b in zip(together[mode][1], alone[1], strict=True))
        probabilities.append(np.stack(alone[0]))
    # The modes do differ here, so the shared pass is not one mode copied.
    assert np.abs(probabilities[0] - probabilities[2]).max() > 1e-3
    with pytest.raises(ValueError, match="wider than"):
        make_modes_predictor([net], 40, "zscore", 1.0, ("none", "flips"))(
            patient.images, patient.spacing_mm, modes=["dihedral"])
