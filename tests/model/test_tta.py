"""Test-time augmentation inside the serving model: the views, their inverses, and every
exported format."""

import numpy as np
import pytest


def _network(seed: int = 0):
    """A small network that is not equivariant to flips or turns (random weights, a
    position-dependent input channel)."""
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((16, 16, 1))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(3, 5, padding="same")(y)
    y = keras.layers.Softmax()(y)
    return keras.Model(x, y)


def _numpy_view(x, k, flip):
    """The dihedral element rot90 by k, then a left-right flip if ``flip``, on [B,S,S,C]."""
    x = np.rot90(x, k, axes=(1, 2))
    return np.flip(x, axis=2) if flip else x


def _numpy_inverse(y, k, flip):
    y = np.flip(y, axis=2) if flip else y
    return np.rot90(y, -k, axes=(1, 2))


def test_the_views_are_the_groups_of_flips_and_of_the_square():
    from lvseg_search.model.tta import AugmentedViews, views

    assert [len(views(m)) for m in ("none", "flips", "dihedral")] == [1, 4, 8]
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        views("rot45")
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)  # no symmetry at all
    out = np.asarray(AugmentedViews("dihedral")(image))
    got = {out[i].tobytes() for i in range(8)}
    expected = {_numpy_view(image, k, f)[0].tobytes() for k in range(4) for f in (False, True)}
    assert got == expected  # all 8 elements, none twice


@pytest.mark.parametrize("mode", ["none", "flips", "dihedral"])
def test_views_averaged_back_give_the_input(mode):
    from lvseg_search.model.tta import AugmentedViews, AverageViews

    x = np.random.default_rng(1).normal(size=(3, 6, 6, 2)).astype(np.float32)
    views = AugmentedViews(mode)(x)
    assert views.shape[0] == 3 * {"none": 1, "flips": 4, "dihedral": 8}[mode]
    np.testing.assert_allclose(np.asarray(AverageViews(mode)(views)), x, atol=1e-6)


def test_dihedral_tta_is_the_mean_of_the_network_over_the_eight_transforms():
    from lvseg_search.model.tta import AugmentedViews, AverageViews

    net = _network()
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 1)).astype(np.float32)
    got = np.asarray(AverageViews("dihedral")(net(AugmentedViews("dihedral")(x))))
    expected = np.mean([_numpy_inverse(np.asarray(net(_numpy_view(x, k, f).copy())), k, f)
                        for k in range(4) for f in (False, True)], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    plain = np.asarray(net(x))
    assert np.abs(got - plain).max() > 1e-3  # the network is not symmetric: TTA changes it


def test_tta_model_agrees_with_the_eager_predictor():
    """(Every exported format of a TTA model is checked in test_localize, with one
    conversion for both.)"""
    import keras

    from lvseg_search.model.serving import build_serving_model, make_predictor

    net = _network(3)
    model = build_serving_model([net], 16, "zscore", 2.0, tta="dihedral",
                                largest_region=False)
    names = [layer.name for layer in model.layers]
    assert "tta_views" in names and "tta_average" in names and "largest_region" not in names
    rng = np.random.default_rng(4)
    batches = [(rng.integers(0, 900, (2, 20, 27)).astype(np.int16),
                np.array([[1.5, 1.5], [2.2, 1.1]], np.float32)),
               (rng.integers(0, 900, (1, 31, 13)).astype(np.int16),
                np.array([[0.9, 1.8]], np.float32))]

    def keras_run(raw, spacing):
        return {k: np.asarray(v) for k, v in
                model({"raw": raw, "pixel_spacing_mm": spacing}).items()}

    eager = make_predictor([net], 16, "zscore", 2.0, tta="dihedral")
    for raw, spacing in batches:
        np.testing.assert_allclose(eager(raw, spacing)["probabilities"],
                                   keras_run(raw, spacing)["probabilities"], atol=1e-5)
    plain = make_predictor([net], 16, "zscore", 2.0)
    assert np.abs(plain(*batches[0])["probabilities"]
                  - keras_run(*batches[0])["probabilities"]).max() > 1e-4
    keras.backend.clear_session()
