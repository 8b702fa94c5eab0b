"""Training augmentation: one set of settings, shared by the pipeline that applies it,
the search options that record it (``augment_*`` keys of ``search.json`` and of a space's
``[search]`` table), the report that describes it and the model card that lists it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

PREFIX = "augment_"
# nnU-Net's ranges (its 2-D defaults); the probabilities are settings.
GAMMA_RANGE = (0.7, 1.5)
CONTRAST_RANGE = (0.75, 1.25)
BRIGHTNESS_RANGE = (0.75, 1.25)
NOISE_VARIANCE = (0.0, 0.1)
BLUR_SIGMA_PX = (0.5, 1.0)
LOW_RESOLUTION_ZOOM = (0.5, 1.0)


@dataclass(frozen=True)
class Augmentation:
    """What random changes training images get (flips always). The defaults are the
    search's.

    Attributes:
        rotation_deg: Largest rotation, degrees. Any, by default: short-axis views
            come turned differently from one scanner or patient to the next; nnU-Net's
            2-D default too.
        scale: Largest relative zoom in or out (hearts and fields of view differ in
            size; about nnU-Net's range).
        shift: Largest translation, as a fraction of the image size (what moves out of
            view leaves padding).
        offset_mm: On the physical grid, training views are cut around the expert LV's
            centre (the image's centre on a slice without LV), moved by up to this many
            mm along each axis: the network learns hearts anywhere in that range of its
            field of view, so that a first pass finds an off-centre heart
            (``roi = localized``). 0: around the image's centre, as validation and the
            deployable model cut it.
        intensity: Largest relative gain and offset change.
        gamma: Probability of a gamma change (``GAMMA_RANGE``, on the image's own
            range, mean and spread kept), after nnU-Net's ``GammaTransform``.
        contrast: Probability of a contrast change about the mean (``CONTRAST_RANGE``),
            clipped to the image's range.
        brightness: Probability of a multiplicative brightness change
            (``BRIGHTNESS_RANGE``).
        noise: Probability of additive Gaussian noise (variance in ``NOISE_VARIANCE``,
            of the normalized image).
        blur: Probability of a Gaussian blur (sigma in ``BLUR_SIGMA_PX``).
        low_resolution: Probability of simulated low resolution: nearest-neighbour
            sampling at ``LOW_RESOLUTION_ZOOM`` times the grid's resolution, then
            bilinear back.
    """

    rotation_deg: float = 180.0
    scale: float = 0.25
    shift: float = 0.0
    offset_mm: float = 40.0
    intensity: float = 0.1
    gamma: float = 0.3
    contrast: float = 0.15
    brightness: float = 0.15
    noise: float = 0.1
    blur: float = 0.2
    low_resolution: float = 0.25

    @classmethod
    def geometric(cls) -> Augmentation:
        """Flips, rotation, zoom and gain only: no per-image draws, no LV-centred views
        (the pipeline's own default)."""
        return cls(offset_mm=0.0, gamma=0.0, contrast=0.0, brightness=0.0, noise=0.0,
                   blur=0.0, low_resolution=0.0)

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | Any) -> Augmentation:
        """The settings from ``augment_*`` keys (a mapping) or attributes (options)."""
        get = options.get if isinstance(options, Mapping) else (
            lambda key, default: getattr(options, key, default))
        return cls(**{f.name: float(get(PREFIX + f.name, f.default)) for f in fields(cls)})

    def as_options(self) -> dict[str, float]:
        """The settings under their ``augment_*`` option names."""
        return {PREFIX + name: value for name, value in asdict(self).items()}

    def on_grid(self, physical: bool) -> Augmentation:
        """As applied: LV-centred views exist on the physical grid only."""
        return self if physical else replace(self, offset_mm=0.0)

    def describe(self, physical: bool) -> str:
        """The augmentation in words (the report's and the search's)."""
        parts = [f"flips, rotation up to {self.rotation_deg:g} deg, zoom +-"
                 f"{100 * self.scale:.0f}%"]
        if self.shift:
            parts.append(f"shift +-{100 * self.shift:.0f}%")
        if self.offset_mm and physical:
            parts.append(f"view around the LV +-{self.offset_mm:g} mm")
        parts.append(f"gain/offset +-{self.intensity:g}")
        for name, value in (("gamma", self.gamma), ("contrast", self.contrast),
                            ("brightness", self.brightness), ("noise", self.noise),
                            ("blur", self.blur), ("low resolution", self.low_resolution)):
            if value:
                parts.append(f"{name} p={value:g}")
        return ", ".join(parts)

    def card(self, physical: bool) -> dict[str, Any]:
        """The augmentation as the model card records it: magnitudes, and the
        probabilities of the ones drawn per image with their fixed ranges."""

        def drawn(probability: float, **ranges: Any) -> dict[str, Any]:
            return {"probability": probability, **ranges}

        return {"flips": True, "rotation_deg": self.rotation_deg, "zoom": self.scale,
                "zoom_on": "physical grid" if physical else "resized image",
                "shift": self.shift,
                "view_around_lv_mm": self.offset_mm if physical else 0.0,
                "gain_offset": self.intensity,
                "gamma": drawn(self.gamma, range=list(GAMMA_RANGE)),
                "contrast": drawn(self.contrast, range=list(CONTRAST_RANGE)),
                "brightness": drawn(self.brightness, range=list(BRIGHTNESS_RANGE)),
                "noise": drawn(self.noise, variance=list(NOISE_VARIANCE)),
                "blur": drawn(self.blur, sigma_px=list(BLUR_SIGMA_PX)),
                "low_resolution": drawn(self.low_resolution, zoom=list(LOW_RESOLUTION_ZOOM))}
