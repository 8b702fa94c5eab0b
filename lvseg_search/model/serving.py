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
loads with ``safe_mode=True`` once this module is imported (it imports the registered
layers of ``serving_layers``). One assembly (:class:`ServingSteps`) is run by both the
Keras model (:func:`build_serving_model`) and the eager predictor (:func:`make_predictor`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from lvseg_search.classes import Classes
from lvseg_search.model.contract import RAW, ROI_CENTRE, ROI_MODES, SPACING
from lvseg_search.model.serving_layers import (
    LOCALIZE_PASSES,
    ChosenCentre,
    ContourRegions,
    ConvexHull,
    LargestRegion,
    LocateLV,
    Preprocess,
    RestoreSize,
)
from lvseg_search.model.tta import AugmentedViews, AverageViews
from lvseg_search.model.tta import views as tta_views


def multi_class(classes: Classes | None) -> bool:
    """Whether a model of these classes delivers label maps (more than the LV)."""
    return classes is not None and classes.count > 2


def _check_roi(roi: str, spacing_mm: float | None) -> None:
    if roi not in ROI_MODES:
        raise ValueError(f"unknown roi {roi!r} (one of {ROI_MODES})")
    if roi == "localized" and spacing_mm is None:
        raise ValueError("roi 'localized' needs a physical grid; this model resizes whole "
                         "images")


class ServingSteps:
    """The deployable computation, its layers built once: locate the LV (``localized``),
    take a given centre (``at_centre``), normalize and resample onto the network's grid,
    test-time views, the networks, the views averaged, back onto the input grid, then
    post-processing. Called on symbolic tensors it assembles the Keras model; called
    eagerly it predicts.

    Args:
        image_size: The networks' input rows and columns.
        normalization: The per-image normalization used in training.
        spacing_mm: The networks' grid pixel size (None: whole images resized).
        class_id: The LV class.
        tta: Test-time augmentation (``tta.TTA_MODES``).
        roi: ``centre`` or ``localized`` (``contract.ROI_MODES``).
        at_centre: Take a given field-of-view centre (``roi_centre_mm``).
        largest_region: Keep each image's largest region of the arg-max.
        convex_hull: Fill that region to its convex hull.
        classes: The networks' classes; with more than the LV the mask holds class ids,
            post-processed per contour, and the class probabilities come out too.
    """

    def __init__(self, image_size: int, normalization: str, spacing_mm: float | None,
                 class_id: int = 1, tta: str = "none", roi: str = "centre",
                 at_centre: bool = False, largest_region: bool = False,
                 convex_hull: bool = False, classes: Classes | None = None):
        self.multi = multi_class(classes)
        if self.multi:
            class_id = classes.blood_pool
        def pre(name):
            return Preprocess(image_size, normalization, spacing_mm, name=name,
                              dtype="float32")

        passes = LOCALIZE_PASSES if roi == "localized" else 0
        self.locate = [(pre(f"locate_view_{step}"),
                        LocateLV(image_size, spacing_mm, class_id, name=f"locate_lv_{step}",
                                 dtype="float32")) for step in range(passes)]
        self.chosen = ChosenCentre(name="chosen_centre", dtype="float32") if at_centre else None
        self.preprocess = pre("preprocess")
        self.views = (AugmentedViews(tta, name="tta_views", dtype="float32")
                      if tta != "none" else None)
        self.average = (AverageViews(tta, name="tta_average", dtype="float32")
                        if tta != "none" else None)
        self.restore = RestoreSize(class_id, spacing_mm, name="restore_size", dtype="float32",
                                   labels=self.multi)
        if self.multi:
            record = classes.to_json()
            self.largest = (ContourRegions(record, "largest_region", name="largest_region")
                            if largest_region else None)
            self.hull = (ContourRegions(record, "convex_hull", name="convex_hull")
                         if convex_hull else None)
        else:
            self.largest = LargestRegion(name="largest_region") if largest_region else None
            self.hull = ConvexHull(name="convex_hull") if convex_hull else None

    def __call__(self, raw, spacing, networks: Callable[[Any, str], Any],
                 given_centre=None, locate: bool = True) -> tuple[Any, ...]:
        """The LV's probability and mask on the input grid (and, with more classes, the
        class probabilities).

        Args:
            raw: Stored pixel values ``[B, H, W]``.
            spacing: Pixel spacing ``[B, 2]``.
            networks: The networks' (averaged) probabilities of a batch of views, given
                the views and a name for the averaging step.
            given_centre: ``roi_centre_mm`` (with ``at_centre``).
            locate: Run the locating passes (skipped eagerly where every given centre
                replaces the one they would find).
        """
        centre = self._centre(raw, spacing, networks, given_centre, locate)
        x = self.preprocess(raw, spacing, centre)
        if self.views is not None:
            x = self.views(x)
        probs = networks(x, "ensemble")
        if self.average is not None:
            probs = self.average(probs)
        restored = self.restore(probs, raw, spacing, centre)
        lv, mask = restored[0], restored[1]
        if self.largest is not None:
            mask = self.largest(mask)
        if self.hull is not None:
            mask = self.hull(mask)
        return (lv, mask, restored[2]) if self.multi else (lv, mask)

    def _centre(self, raw, spacing, networks, given_centre, locate: bool):
        """Where the field of view is cut (None: the image centre)."""
        centre = None
        for step, (view, find) in enumerate(self.locate if locate else ()):
            centre = find(networks(view(raw, spacing, centre), f"ensemble_locate_{step}"),
                          centre)
        if self.chosen is not None and given_centre is not None:
            centre = self.chosen(raw, given_centre, centre)
        return centre

    def modes(self, raw, spacing, networks: Callable[[Any, str], Any],
              modes: Sequence[str], given_centre=None,
              locate: bool = True) -> dict[str, tuple[Any, ...]]:
        """Eagerly, :meth:`__call__`'s outputs for several test-time augmentations from
        one network call on the views of the widest (the steps' own ``tta``): a mode's
        views are the first of the widest's (``tta.views``), so its average is over the
        first rows of that call. Without post-processing (the steps must have none).

        Args:
            raw: As for :meth:`__call__`.
            spacing: As for :meth:`__call__`.
            networks: As for :meth:`__call__`.
            modes: Test-time augmentations, none wider than the steps' own.
            given_centre: As for :meth:`__call__`.
            locate: As for :meth:`__call__`.

        Returns:
            Per mode, what :meth:`__call__` returns.
        """
        centre = self._centre(raw, spacing, networks, given_centre, locate)
        x = self.preprocess(raw, spacing, centre)
        batch = int(ops.shape(x)[0])
        probs = networks(self.views(x) if self.views is not None else x, "ensemble")
        out = {}
        for mode in modes:
            n = len(tta_views(mode))
            if n * batch > int(ops.shape(probs)[0]):
                raise ValueError(f"test-time augmentation {mode!r} is wider than the "
                                 "steps' own")
            mode_probs = probs[:n * batch]
            if n > 1:
                mode_probs = AverageViews(mode, dtype="float32")(mode_probs)
            restored = self.restore(mode_probs, raw, spacing, centre)
            out[mode] = tuple(restored) if self.multi else (restored[0], restored[1])
        return out


def _shares(weights: Sequence[float] | None, n: int) -> list[float] | None:
    """Weights normalized to sum to 1 (None: equal weights)."""
    if weights is None:
        return None
    if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"{len(weights)} weights for {n} networks, or weights not "
                         "positive: one non-negative weight per network, some positive")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def build_serving_model(networks: Sequence[keras.Model], image_size: int,
                        normalization: str, spacing_mm: float | None,
                        class_id: int = 1, tta: str = "none",
                        largest_region: bool = True, roi: str = "centre",
                        convex_hull: bool = False, at_centre: bool = False,
                        weights: Sequence[float] | None = None,
                        classes: Classes | None = None) -> keras.Model:
    """Wraps trained networks into the deployable model (serving contract 2).

    Args:
        networks: One network, or several whose probabilities are averaged (an ensemble
            of fold models, or of several trials' fold models).
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
        weights: Each network's weight in the average (None: equal weights); they are
            normalized to sum to 1.
        classes: The networks' classes (None: the LV and background). With more, the
            mask holds class ids, post-processed per contour, and the model also gives
            ``class_probabilities`` float32 ``[B, H, W, C]``.

    Returns:
        A model from ``{"raw": int16 [B, H, W], "pixel_spacing_mm": float32 [B, 2]}`` to
        ``{"probabilities": float32 [B, H, W], "mask": uint8 [B, H, W]}``. With
        ``at_centre`` it also takes ``"roi_centre_mm": float32 [B, 2]``: each image's
        field of view is cut there, in mm from the image's centre (rows holding a NaN:
        where the model would cut it).

    Raises:
        ValueError: An unknown ``roi``, ``localized`` or ``at_centre`` without a physical
            grid, ``convex_hull`` without ``largest_region``, or weights that do not
            match the networks.
    """
    _check_roi(roi, spacing_mm)
    share = _shares(weights, len(networks))
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
        if len(outputs) == 1:
            return outputs[0]
        if share is None:
            return layers.Average(name=name)(outputs)
        # A weighted average in plain layers, which every format converts.
        return layers.Add(name=name)([
            layers.Rescaling(w, name=f"{name}_weight_{k}", dtype="float32")(out)
            for k, (out, w) in enumerate(zip(outputs, share, strict=True))])

    steps = ServingSteps(image_size, normalization, spacing_mm, class_id, tta, roi,
                         at_centre, largest_region, convex_hull, classes)
    out = steps(raw, spacing, run_networks, inputs.get(ROI_CENTRE))
    outputs = {"probabilities": out[0], "mask": out[1]}
    if steps.multi:
        outputs["class_probabilities"] = out[2]
    return keras.Model(inputs, outputs, name="lvseg")


def make_predictor(networks: Sequence[keras.Model], image_size: int, normalization: str,
                   spacing_mm: float | None, class_id: int = 1, tta: str = "none",
                   roi: str = "centre", weights: Sequence[float] | None = None,
                   classes: Classes | None = None):
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
        weights: Each network's weight, as for :func:`build_serving_model`.
        classes: As for :func:`build_serving_model` (the mask: arg-max class ids).

    Returns:
        A function from raw int16 ``[B, H, W]``, pixel spacing ``[B, 2]`` and optionally
        ``roi_centre_mm`` ``[B, 2]`` (as the serving model takes it) to numpy
        ``{"probabilities", "mask"}`` (and ``class_probabilities`` with more classes).
    """
    _check_roi(roi, spacing_mm)
    steps = ServingSteps(image_size, normalization, spacing_mm, class_id, tta, roi,
                         at_centre=spacing_mm is not None, classes=classes)
    run_networks = _eager_networks(networks, weights)

    def predict(raw, pixel_spacing, roi_centre_mm=None) -> dict:
        raw, pixel_spacing, given, locating = _eager_inputs(raw, pixel_spacing,
                                                            roi_centre_mm, spacing_mm)
        return _numpy(steps(raw, pixel_spacing, run_networks, given, locate=locating))

    return predict


def make_modes_predictor(networks: Sequence[keras.Model], image_size: int,
                         normalization: str, spacing_mm: float | None,
                         modes: Sequence[str], class_id: int = 1, roi: str = "centre",
                         classes: Classes | None = None):
    """:func:`make_predictor` for several test-time augmentations at once, from one
    network call per batch on the views of the widest (the locating passes are the same
    for every mode too): the out-of-fold decision table scores every mode, and the
    dihedral views hold the flips' and the image's own (``tta.views``).

    Args:
        networks: As for :func:`make_predictor` (equal weights).
        image_size: As for :func:`make_predictor`.
        normalization: As for :func:`make_predictor`.
        spacing_mm: As for :func:`make_predictor`.
        modes: The test-time augmentations (``tta.TTA_MODES``).
        class_id: As for :func:`make_predictor`.
        roi: As for :func:`make_predictor`.
        classes: As for :func:`make_predictor`.

    Returns:
        A function as :func:`make_predictor`'s, which also takes ``modes`` (a subset;
        None: all) and returns each mode's result by its name.
    """
    _check_roi(roi, spacing_mm)
    widest = max(modes, key=lambda mode: len(tta_views(mode)))
    steps = ServingSteps(image_size, normalization, spacing_mm, class_id, widest, roi,
                         at_centre=spacing_mm is not None, classes=classes)
    run_networks = _eager_networks(networks, None)

    every = tuple(modes)

    def predict(raw, pixel_spacing, roi_centre_mm=None,
                modes: Sequence[str] | None = None) -> dict[str, dict]:
        raw, pixel_spacing, given, locating = _eager_inputs(raw, pixel_spacing,
                                                            roi_centre_mm, spacing_mm)
        out = steps.modes(raw, pixel_spacing, run_networks,
                          every if modes is None else modes, given, locate=locating)
        return {mode: _numpy(result) for mode, result in out.items()}

    return predict


def _eager_networks(networks: Sequence[keras.Model], weights: Sequence[float] | None):
    """The networks' (weighted) mean probabilities of a batch, run eagerly."""
    share = _shares(weights, len(networks))

    def run_networks(x, name=None):
        outputs = [ops.cast(net(x, training=False), "float32") for net in networks]
        if len(outputs) == 1:
            return outputs[0]
        if share is None:
            return ops.mean(ops.stack(outputs), axis=0)
        return sum(out * w for out, w in zip(outputs, share, strict=True))

    return run_networks


def _eager_inputs(raw, pixel_spacing, roi_centre_mm, spacing_mm: float | None):
    """The inputs as tensors, the given centre (or None) and whether the locating
    passes run: eagerly, a located centre that every given one replaces is not
    computed.

    Raises:
        ValueError: A centre given to a model without a physical grid.
    """
    raw = ops.convert_to_tensor(raw, dtype="int16")
    pixel_spacing = ops.convert_to_tensor(pixel_spacing, dtype="float32")
    given = None if roi_centre_mm is None else np.asarray(roi_centre_mm, np.float32)
    if given is not None and spacing_mm is None:
        raise ValueError("roi_centre_mm needs a physical grid; this model resizes "
                         "whole images")
    return raw, pixel_spacing, given, given is None or bool(np.isnan(given).any())


def _numpy(out: tuple[Any, ...]) -> dict[str, np.ndarray]:
    """The steps' outputs as the predictor's dict of numpy arrays."""
    result = {"probabilities": ops.convert_to_numpy(out[0]),
              "mask": ops.convert_to_numpy(out[1])}
    if len(out) > 2:
        result["class_probabilities"] = ops.convert_to_numpy(out[2])
    return result
