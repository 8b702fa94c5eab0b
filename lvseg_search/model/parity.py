"""Parity of the exported formats: every format run on the same inputs as the Keras
serving model, probabilities within ``PARITY_TOLERANCE`` and no mask pixel different
other than at a tie of classes."""

from __future__ import annotations

from typing import Any

import numpy as np

from lvseg_search.errors import UserError

PARITY_TOLERANCE = 1e-4  # float32 formats must agree with the Keras model this closely


def probe_inputs(patients: list[Any], at_centre: bool = False) -> list[tuple[Any, ...]]:
    """Inputs the formats are compared on: stored images with their spacing (test
    patients, else validation ones), the same at other pixel spacings, and odd-sized,
    non-square random images of unequal row and column spacing; batches of 1..4. With
    ``at_centre``, some also with where to cut each view (NaN rows among them)."""
    rng = np.random.default_rng(0)
    batches: list[tuple[Any, ...]] = []
    for p in patients[:2]:
        if p.images.dtype != object:
            n = min(4, len(p.images))
            spacing = p.spacing_mm[:n].astype(np.float32)
            batches.append((p.images[:n], spacing))
            batches.append((p.images[:n], spacing * np.float32(0.6)))
            batches.append((p.images[:n], spacing * np.float32(1.7)))
            if at_centre:
                centre = rng.uniform(-30, 30, (n, 2)).astype(np.float32)
                centre[n // 2] = np.nan
                batches.append((p.images[:n], spacing, centre))
    batches.append((rng.integers(0, 1200, (1, 97, 131)).astype(np.int16),
                    np.array([[1.9, 0.8]], np.float32)))
    batches.append((rng.integers(0, 1200, (2, 180, 120)).astype(np.int16),
                    np.array([[0.7, 0.7], [1.4, 1.2]], np.float32)))
    if at_centre:
        batches.append((*batches[-1], np.array([[12.0, -40.0], [np.nan, 5.0]], np.float32)))
    return batches


def _tie_pixels(ref: np.ndarray, got: np.ndarray, classes: int) -> np.ndarray:
    """Pixels where the two LV probabilities are so close to a tie of classes that float
    rounding decides the arg-max. With two classes the LV wins at 0.5: a pixel is a tie
    when the two probabilities lie on either side of it (or on it). With more, the LV ties
    with another class somewhere between 1/C and 1/2, which is all that can be told from
    the LV's probability alone."""
    if classes <= 2:
        return (ref - 0.5) * (got - 0.5) <= 0
    return (ref >= 1.0 / classes - PARITY_TOLERANCE) & (ref <= 0.5 + PARITY_TOLERANCE)


def check_parity(reference, candidates: dict[str, Any],
                 batches: list[np.ndarray], classes: int = 2) -> dict[str, dict[str, float]]:
    """Runs every format on the same inputs as the Keras model.

    Args:
        reference: The Keras serving model.
        candidates: Format name -> function from raw batch to ``{"probabilities", "mask"}``;
            one whose ``at_centre`` attribute is true also takes ``roi_centre_mm``.
        batches: Raw int16 batches with their pixel spacing, some perhaps with
            ``roi_centre_mm`` (run on the formats that take it).
        classes: The networks' classes (background included).

    Returns:
        Per format: ``max_abs_diff`` of the probabilities, ``mask_mismatch_pixels`` (0
        for every format that passes), ``mask_tie_pixels``: mask pixels that differ
        where the probabilities sit on a tie of classes, so that a difference within the
        tolerance decides the arg-max (float formats round differently; the count is
        reported, not hidden), and ``at_centre``: whether its ``serve_at_centre``
        signature was compared too.

    Raises:
        UserError: The Keras model or a format gives a NaN or infinite probability, a
            format fails to run, its probabilities differ by more than
            ``PARITY_TOLERANCE``, or any of its mask pixels differs other than at a tie
            (nothing is written then).
    """
    expected = [{k: np.asarray(v) for k, v in reference(*b).items()} for b in batches]
    if not all(np.isfinite(ref["probabilities"]).all() for ref in expected):
        raise UserError("keras: the model's probabilities hold NaN or infinite values; "
                        "nothing was written (re-run the search or export another --trial)")
    report = {}
    for name, run_format in candidates.items():
        diff, mismatch, ties = 0.0, 0, 0
        at_centre = bool(getattr(run_format, "at_centre", False))
        for b, ref in zip(batches, expected, strict=True):
            if len(b) > 2 and not at_centre:
                continue
            try:
                got = run_format(*b)
            except Exception as e:  # a runtime's own failure: one line, not its traceback
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                hint = "; --no-onnx skips ONNX" if name == "onnx" else ""
                raise UserError(f"{name}: exported model fails on a {b[0].shape} batch "
                                f"({type(e).__name__}: {first}); nothing was written"
                                f"{hint}") from e
            probs = np.asarray(got["probabilities"])
            mask = np.asarray(got["mask"])
            if probs.shape != ref["probabilities"].shape or mask.shape != ref["mask"].shape:
                raise UserError(f"{name}: output shape {probs.shape} differs from the Keras "
                                f"model's {ref['probabilities'].shape}; nothing was written")
            if not np.isfinite(probs).all():
                raise UserError(f"{name}: exported model gives NaN or infinite probabilities; "
                                "nothing was written")
            # NaN never wins a max(): a NaN difference must not pass as 0.
            diff = max(diff, float(np.abs(probs - ref["probabilities"]).max()))
            differ = mask != ref["mask"]
            tie = differ & _tie_pixels(ref["probabilities"], probs, classes)
            ties += int(tie.sum())
            mismatch += int((differ & ~tie).sum())
        report[name] = {"max_abs_diff": diff, "mask_mismatch_pixels": mismatch,
                        "mask_tie_pixels": ties, "at_centre": at_centre}
        if diff > PARITY_TOLERANCE:
            raise UserError(f"{name}: exported model differs from the Keras model by {diff:.2e} "
                            f"(> {PARITY_TOLERANCE:g}); nothing was written")
        if mismatch:
            raise UserError(f"{name}: exported model's mask differs from the Keras model's in "
                            f"{mismatch} pixel(s) that are not ties of classes; nothing was "
                            "written")
    return report
