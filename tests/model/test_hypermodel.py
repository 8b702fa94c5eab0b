"""The HyperModel's networks, losses and Dice metric."""

import subprocess
import sys
import textwrap

import keras
import keras_tuner as kt
import numpy as np
import pytest

from lvseg_search.model.hypermodel import (
    SegmentationHyperModel,
    build_encoder_decoder,
    build_lab_fcn,
)
from lvseg_search.model.losses import CrossentropyDiceLoss, SoftDiceLoss
from lvseg_search.model.metrics import Dice
from lvseg_search.model.space import load_space

BASE = {"depth": 3, "base_filters": 4, "kernel_size": 3, "convs_per_stage": 2,
        "downsampling": "max_pool", "decoder": "unet", "normalization": "batch",
        "dropout": 0.1, "activation": "relu"}


@pytest.mark.parametrize("decoder", ["unet", "transposed", "fcn"])
@pytest.mark.parametrize("downsampling", ["max_pool", "strided_conv"])
def test_encoder_decoder_variants_map_images_to_class_probabilities(decoder, downsampling):
    model = build_encoder_decoder({**BASE, "decoder": decoder, "downsampling": downsampling},
                                  32, num_classes=3)
    probs = model.predict(np.random.default_rng(0).normal(size=(2, 32, 32, 1)), verbose=0)
    assert probs.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    has_concat = any(isinstance(layer, keras.layers.Concatenate) for layer in model.layers)
    assert has_concat == (decoder == "unet")
    transposed = [la for la in model.layers if isinstance(la, keras.layers.Conv2DTranspose)]
    assert len(transposed) == (1 if decoder == "fcn" else 3)


def test_depth_sets_the_number_of_downsamplings():
    for depth in (1, 2, 4):
        model = build_encoder_decoder({**BASE, "depth": depth}, 32, 2)
        pools = [la for la in model.layers if isinstance(la, keras.layers.MaxPooling2D)]
        assert len(pools) == depth


def test_residual_blocks_add_a_shortcut_to_every_encoder_level_and_the_bottleneck():
    for convs in (1, 2):
        hp = {**BASE, "block": "residual", "convs_per_stage": convs}
        model = build_encoder_decoder(hp, 32, 2)
        adds = [la for la in model.layers if isinstance(la, keras.layers.Add)]
        assert len(adds) == BASE["depth"] + 1
        # A 1x1 projection where the width changes: the input (1 channel) and after each
        # downsampling (max pooling keeps the width, the next level doubles it).
        ones = [la for la in model.layers
                if type(la) is keras.layers.Conv2D and la.kernel_size == (1, 1)
                and la.name != "score"]
        assert len(ones) == BASE["depth"] + 1
        plain = build_encoder_decoder({**hp, "block": "plain"}, 32, 2)
        assert model.count_params() > plain.count_params()
        assert not any(isinstance(la, keras.layers.Add) for la in plain.layers)


def test_instance_normalization_is_per_image_and_channel():
    model = build_encoder_decoder({**BASE, "normalization": "instance"}, 32, 2)
    norms = [la for la in model.layers if isinstance(la, keras.layers.GroupNormalization)]
    assert norms and all(la.groups == la.input.shape[-1] for la in norms)
    x = np.random.default_rng(1).normal(size=(3, 32, 32, 1)).astype("float32")
    # No batch statistics: an image's output does not depend on the others in its batch.
    np.testing.assert_allclose(model.predict(x, verbose=0)[:1], model.predict(x[:1], verbose=0),
                               atol=1e-5)


def test_nnunet_training_sgd_nesterov_with_poly_decay():
    from lvseg_search.model.hypermodel import make_optimizer

    opt = make_optimizer("sgd_nesterov", 0.01)
    assert isinstance(opt, keras.optimizers.SGD)
    assert opt.momentum == pytest.approx(0.99) and opt.nesterov is True
    space = load_space("default")
    for name, value in (("block", "residual"), ("normalization", "instance"),
                        ("optimizer", "sgd_nesterov"), ("lr_schedule", "poly")):
        assert value in space.params[name].values


def test_lab_fcn_matches_the_seed_lab():
    model = build_lab_fcn(256, 2)
    convs = [la for la in model.layers if type(la) is keras.layers.Conv2D]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (100, (5, 5), (2, 2)), (200, (5, 5), (2, 2)), (300, (3, 3), (1, 1)),
        (300, (3, 3), (1, 1)), (2, (1, 1), (1, 1))]
    assert sum(isinstance(la, keras.layers.MaxPooling2D) for la in model.layers) == 2
    up = [la for la in model.layers if isinstance(la, keras.layers.Conv2DTranspose)]
    assert len(up) == 1 and up[0].strides == (16, 16)
    assert model.output_shape == (None, 256, 256, 2)


def test_hypermodel_compiles_with_dice_metric_and_chosen_loss():
    space = load_space("quick")
    hp = kt.HyperParameters()
    hp.Fixed("loss", "dice")
    model = SegmentationHyperModel(space, 64).build(hp)
    assert isinstance(model.loss, SoftDiceLoss)
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 1)).astype("float32")
    y = np.zeros((4, 64, 64, 1), "uint8")
    y[:, 20:40, 20:40] = 1
    history = model.fit(x, y, epochs=2, verbose=0)
    assert {"loss", "dice"} <= set(history.history)


def _probs(mask, classes=2):
    return np.eye(classes, dtype="float32")[mask[..., 0]]


def test_dice_metric_known_answers():
    truth = np.zeros((1, 8, 8, 1), "uint8")
    truth[0, 0:4, 0:4] = 1  # 16 pixels
    pred = np.zeros_like(truth)
    pred[0, 0:4, 0:2] = 1  # 8 pixels, all inside
    metric = Dice()
    metric.update_state(truth, _probs(truth))
    assert float(metric.result()) == pytest.approx(1.0)
    metric.reset_state()
    metric.update_state(truth, _probs(pred))
    assert float(metric.result()) == pytest.approx(2 * 8 / (16 + 8))
    metric.reset_state()
    empty = np.zeros_like(truth)
    metric.update_state(empty, _probs(empty))  # nothing to find, nothing found
    metric.update_state(truth, _probs(empty))  # missed completely
    assert float(metric.result()) == pytest.approx(0.5)


def test_losses_are_small_for_perfect_and_large_for_wrong_predictions():
    truth = np.zeros((2, 8, 8, 1), "uint8")
    truth[:, 2:6, 2:6] = 1
    good, bad = _probs(truth), _probs(1 - truth)
    for loss in (SoftDiceLoss(), CrossentropyDiceLoss()):
        assert float(loss(truth, good)) < 0.05
        assert float(loss(truth, bad)) > 0.9


def test_model_code_builds_and_trains_under_jax_without_tensorflow():
    """Model, loss, metric and serving modules must work where only JAX is installed."""
    code = textwrap.dedent("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        sys.modules["tensorflow"] = None  # any TensorFlow import now fails
        import keras, keras_tuner as kt
        import numpy as np
        from lvseg_search.model.hypermodel import SegmentationHyperModel, build_lab_fcn
        from lvseg_search.model.space import load_space
        hp = kt.HyperParameters()
        for name, value in {"depth": 1, "base_filters": 4, "convs_per_stage": 1,
                            "decoder": "unet", "loss": "crossentropy_dice",
                            "normalization": "batch"}.items():
            hp.Fixed(name, value)
        model = SegmentationHyperModel(load_space("quick"), 32).build(hp)
        x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
        y = np.zeros((4, 32, 32, 1), "uint8"); y[:, 8:24, 8:24] = 1
        history = model.fit(x, y, epochs=1, batch_size=4, verbose=0)
        print(keras.backend.backend(), model.output_shape, sorted(history.history),
              build_lab_fcn(32, 2).name)
        # The deployable wrapper too, with its in-graph post-processing.
        from lvseg_search.model.postprocess import keep_largest_regions
        from lvseg_search.model.serving import build_serving_model
        from lvseg_search.model.serving_layers import LargestRegion
        raw = np.random.default_rng(1).integers(0, 900, (2, 40, 48)).astype("int16")
        spacing = np.array([[1.4, 1.4], [0.8, 1.1]], "float32")
        out = build_serving_model([model], 32, "zscore", 1.5).predict_on_batch(
            {"raw": raw, "pixel_spacing_mm": spacing})
        masks = (np.random.default_rng(2).random((3, 20, 24)) > 0.5).astype("uint8")
        same = np.array_equal(np.asarray(LargestRegion()(masks)),
                              np.stack(keep_largest_regions(masks)))
        print("serving", tuple(out["mask"].shape), same)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jax (None, 32, 32, 2) ['dice', 'loss'] lab_fcn" in proc.stdout
    assert "serving (2, 40, 48) True" in proc.stdout


def _deep_supervised(seed: int = 0):
    from lvseg_search.model.deep_supervision import DeepSupervision

    keras.utils.set_random_seed(seed)
    hp = kt.HyperParameters()
    for name, value in {"depth": 3, "base_filters": 16, "convs_per_stage": 1,
                        "kernel_size": 3, "decoder": "unet", "normalization": "batch",
                        "dropout": 0.0, "activation": "relu", "loss": "crossentropy_dice",
                        "optimizer": "adam", "learning_rate": 3e-3, "lr_schedule": "constant",
                        "block": "plain", "deep_supervision": "on"}.items():
        hp.Fixed(name, value)
    model = SegmentationHyperModel(load_space("default"), 32).build(hp)
    assert isinstance(model, DeepSupervision)
    return model


def test_deep_supervision_outputs_at_the_two_decoder_levels_below_full_resolution():
    on = build_encoder_decoder({**BASE, "deep_supervision": "on"}, 32, 2)
    assert [tuple(o.shape) for o in on.outputs] == [(None, 32, 32, 2)] * 3
    # Main output first, then the auxiliary ones, finest first (their loss weights).
    assert on.output_names == [
        "probabilities", "probabilities_level_1", "probabilities_level_2"]
    # Nothing to supervise: one level, or the lab's single up-score.
    for hp in ({**BASE, "depth": 1}, {**BASE, "decoder": "fcn"}, BASE):
        net = build_encoder_decoder({**hp, "deep_supervision": "on" if hp is not BASE
                                     else "off"}, 32, 2)
        assert len(net.outputs) == 1


def test_deep_supervision_trains_on_every_level_and_serves_the_main_output(tmp_path):
    from lvseg_search.model.deep_supervision import inference_network

    model = _deep_supervised()
    assert model.loss_weights_by_level == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 1)).astype("float32")
    y = np.zeros((8, 32, 32, 1), "uint8")
    y[:, 8:24, 8:24] = 1
    x[y[..., 0] == 1] += 2.0
    # The training loss is the weighted sum of every level's loss.
    outputs = model(x, training=True)
    assert len(outputs) == 3
    per_level = [float(model.loss(y, o)) for o in outputs]
    total = float(model.compute_loss(x, y, outputs, training=True))
    weighted = sum(w * v for w, v in zip(model.loss_weights_by_level, per_level, strict=True))
    assert total == pytest.approx(weighted, rel=1e-5)
    history = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert {"loss", "dice"} <= set(history.history)
    # Inference, validation and export see one output, the main one, with the same weights.
    served = inference_network(model)
    assert len(served.outputs) == 1 and served.output_shape == (None, 32, 32, 2)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(served(x)), atol=1e-6)
    # A checkpoint of the training model loads into a fresh one (as a promoted trial's
    # folds and the report's fold models do).
    model.save_weights(str(tmp_path / "w.weights.h5"))
    fresh = _deep_supervised(seed=1)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_allclose(np.asarray(fresh(x)), np.asarray(model(x)), atol=1e-6)
