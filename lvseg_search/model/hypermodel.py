"""The search's HyperModel: variable-depth encoder / transposed-conv decoder networks,
plus the seed lab's FCN as a fixed point (``keras.layers``/``keras.ops`` only, so it
builds under the TensorFlow, JAX and PyTorch backends)."""

from __future__ import annotations

from typing import Any

import keras
import keras_tuner
from keras import layers

from lvseg_search.model.deep_supervision import DeepSupervision
from lvseg_search.model.losses import get_loss
from lvseg_search.model.metrics import Dice
from lvseg_search.model.space import SearchSpace


def _norm(x, kind: str):
    if kind == "batch":
        # Short Hyperband budgets: a faster-moving average keeps inference statistics
        # close to training ones after few steps.
        return layers.BatchNormalization(momentum=0.9)(x)
    if kind == "group":
        return layers.GroupNormalization(groups=min(8, x.shape[-1]))(x)
    if kind == "instance":
        # nnU-Net's normalization: statistics per image and channel, so they do not
        # depend on the batch (batches of 2-8 slices on CPUs make batch statistics noisy).
        return layers.GroupNormalization(groups=-1)(x)
    return x


def _conv(x, filters: int, hp: dict[str, Any], strides: int = 1, activate: bool = True):
    use_bias = hp["normalization"] == "none"
    x = layers.Conv2D(filters, hp["kernel_size"], strides=strides, padding="same",
                      use_bias=use_bias)(x)
    x = _norm(x, hp["normalization"])
    return layers.Activation(hp["activation"])(x) if activate else x


def _stage(x, filters: int, hp: dict[str, Any]):
    """One level's convolutions: plain, or a residual block (the convolutions plus an
    identity shortcut, projected by a 1x1 convolution where the width changes; He et
    al. 2016, as in nnU-Net's residual encoders), activated after the sum."""
    n = hp["convs_per_stage"]
    if hp.get("block", "plain") != "residual":
        for _ in range(n):
            x = _conv(x, filters, hp)
        return x
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=hp["normalization"] == "none")(x)
        shortcut = _norm(shortcut, hp["normalization"])
    for i in range(n):
        x = _conv(x, filters, hp, activate=i < n - 1)
    return layers.Activation(hp["activation"])(layers.Add()([x, shortcut]))


def build_encoder_decoder(hp: dict[str, Any], image_size: int, num_classes: int) -> keras.Model:
    """Builds one encoder / decoder network.

    Args:
        hp: Hyperparameter values (see ``space.HYPERPARAMETERS``).
        image_size: Input rows and columns (divisible by ``2 ** depth``).
        num_classes: Output classes including background.

    Returns:
        An uncompiled model from ``[B, S, S, 1]`` images to softmax ``[B, S, S, C]``.
    """
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x, skips, filters = inputs, [], hp["base_filters"]
    for _ in range(hp["depth"]):
        x = _stage(x, filters, hp)
        skips.append(x)
        x = (layers.MaxPooling2D(2)(x) if hp["downsampling"] == "max_pool"
             else _conv(x, filters, hp, strides=2))
        if hp["dropout"] > 0:
            x = layers.SpatialDropout2D(hp["dropout"])(x)
        filters *= 2
    x = _stage(x, filters, hp)
    if hp["decoder"] == "fcn":
        # The lab's single up-score: 1x1 class scores, one transposed conv back to size.
        stride = 2 ** hp["depth"]
        x = layers.Conv2D(num_classes, 1, name="score")(x)
        x = layers.Conv2DTranspose(num_classes, 2 * stride, strides=stride, padding="same",
                                   name="upscore")(x)
    else:
        auxiliary = []
        for level, skip in reversed(list(enumerate(skips))):
            filters //= 2
            x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
            if hp["decoder"] == "unet":
                x = layers.Concatenate()([x, skip])
            for _ in range(hp["convs_per_stage"]):
                x = _conv(x, filters, hp)
            if 1 <= level <= DEEP_SUPERVISION_LEVELS and deep_supervision(hp):
                auxiliary.insert(0, _auxiliary_output(x, level, num_classes))
        x = layers.Conv2D(num_classes, 1, name="score")(x)
        if auxiliary:
            main = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
            return keras.Model(inputs, [main, *auxiliary], name="encoder_decoder")
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="encoder_decoder")


# Decoder levels below full resolution that get an auxiliary output (nnU-Net leaves out
# the coarsest ones, whose masks are a few pixels across).
DEEP_SUPERVISION_LEVELS = 2


def deep_supervision(hp: dict[str, Any]) -> bool:
    """Whether a configuration trains with auxiliary outputs (``model.deep_supervision``):
    asked for, with a decoder that has levels to supervise."""
    return (hp.get("deep_supervision", "off") == "on" and hp["decoder"] != "fcn"
            and hp["depth"] >= 2)


def _auxiliary_output(x, level: int, num_classes: int):
    """Class probabilities from a decoder level ``level`` halvings below full
    resolution, upsampled back to it."""
    x = layers.Conv2D(num_classes, 1, name=f"score_level_{level}")(x)
    # Nearest: each coarse pixel is scored against the full-resolution pixels it covers
    # (nnU-Net instead shrinks the masks to each level); bilinear resizing needs static
    # spatial sizes, which the training batches do not declare.
    x = layers.UpSampling2D(2 ** level)(x)
    return layers.Activation("softmax", dtype="float32", name=f"probabilities_level_{level}")(x)


def build_lab_fcn(image_size: int, num_classes: int) -> keras.Model:
    """The seed lab's FCN: conv 5x5/100 stride 2, pool, conv 5x5/200 stride 2, pool,
    conv 3x3/300 twice, 1x1 score, one transposed-conv up-score x16."""
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Conv2D(100, 5, strides=2, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(200, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(300, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(300, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(num_classes, 1, name="score")(x)
    x = layers.Conv2DTranspose(num_classes, 31, strides=16, padding="same", name="upscore")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="lab_fcn")


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """Returns a fresh optimizer."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "sgd_nesterov":  # nnU-Net's optimizer (with its poly schedule)
        return keras.optimizers.SGD(learning_rate, momentum=0.99, nesterov=True)
    return keras.optimizers.SGD(learning_rate, momentum=0.9)


class SegmentationHyperModel(keras_tuner.HyperModel):
    """Builds and compiles one network per set of hyperparameter values.

    Args:
        space: The validated search space.
        image_size: Input rows and columns.
        num_classes: Output classes including background (2: LV only).
        jit_compile: Compile train steps with XLA.
        precision: Keras dtype policy the networks compute in (``float32``,
            ``mixed_float16``, ``mixed_bfloat16``); their outputs are float32 either way.
        ignore: The label of partly labelled pixels where the masks hold any
            (``classes.Classes.ignore``); the losses then train on what is known.
        blood_pool: The LV blood pool's class (the Dice metric's, and the one partly
            labelled pixels are known not to be).
    """

    def __init__(self, space: SearchSpace, image_size: int, num_classes: int = 2,
                 jit_compile: bool = False, precision: str = "float32",
                 ignore: int | None = None, blood_pool: int = 1):
        super().__init__(name=f"lvseg_{space.name}")
        self.space = space
        self.image_size = image_size
        self.num_classes = num_classes
        self.jit_compile = jit_compile
        self.precision = precision
        self.ignore = ignore
        self.blood_pool = blood_pool

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        values = self.space.register(hp)
        # Layers take Keras's process-wide policy when made. It is set here, at every
        # build, because clearing the session between trials resets it to float32.
        keras.mixed_precision.set_dtype_policy(self.precision)
        if values["architecture"] == "lab_fcn":
            model = build_lab_fcn(self.image_size, self.num_classes)
        else:
            model = build_encoder_decoder(values, self.image_size, self.num_classes)
            if deep_supervision(values):
                model = DeepSupervision(model, name="deep_supervision")
        model.compile(optimizer=make_optimizer(values["optimizer"], values["learning_rate"]),
                      loss=get_loss(values["loss"], self.ignore, self.blood_pool),
                      metrics=[Dice(class_id=self.blood_pool)],
                      jit_compile=self.jit_compile)
        return model
