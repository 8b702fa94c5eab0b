"""The classes of a segmentation, as data: their names, which of them are the LV blood
pool and the myocardium, and the label of pixels left unlabelled.

Every stage reads the classes from here (the manifest writes them, the model card
carries them), so that a blood-pool-only run and a run with the myocardium (or, later,
a data set's own classes) go through the same code. The contours the Sunnybrook
challenge scores are regions of classes: the endocardial contour bounds the blood pool,
the epicardial contour bounds the blood pool and the myocardium together, and the
myocardium is the ring between them.

An expert who drew only the i-contour of a frame said where the blood pool is and that
nothing else is blood pool, not where the myocardium ends. Such pixels carry
:data:`IGNORE`: for the blood pool they are known negatives; for the other classes they
are unlabelled (left out of the loss's other terms and of the scores of every region
but the blood pool), so no labelled data is thrown away.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKGROUND, BLOOD_POOL, MYOCARDIUM = 0, 1, 2
# The label of pixels that are not blood pool, and not known to be background or
# myocardium (a frame with an i-contour and no o-contour).
IGNORE = 255
BLOOD_POOL_NAME, MYOCARDIUM_NAME = "lv_blood_pool", "myocardium"
# Search objectives over the contours (``--objective``).
OBJECTIVES = ("endo", "epi", "mean")
# Mass density of myocardium, g/mL (the value cardiac MRI analysis uses).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05


@dataclass(frozen=True)
class Classes:
    """The classes of a segmentation.

    Attributes:
        names: Class names by id, background first.
        blood_pool: The LV blood pool's id.
        myocardium: The LV myocardium's id; None where the data has none.
        ignore: The label of unlabelled pixels in the masks; None where every pixel is
            labelled.
    """

    names: tuple[str, ...] = ("background", BLOOD_POOL_NAME)
    blood_pool: int = BLOOD_POOL
    myocardium: int | None = None
    ignore: int | None = None

    def __post_init__(self):
        ids = [self.blood_pool] + ([self.myocardium] if self.myocardium is not None else [])
        if len(self.names) < 2 or any(not 0 < i < len(self.names) for i in ids):
            raise ValueError(f"classes {self.names}: the blood pool ({self.blood_pool}) and "
                             f"myocardium ({self.myocardium}) must be foreground classes")
        if self.ignore is not None and self.ignore < len(self.names):
            raise ValueError(f"ignore label {self.ignore} is a class id")

    @property
    def count(self) -> int:
        """Number of classes, background included (the network's output channels)."""
        return len(self.names)

    @property
    def has_myocardium(self) -> bool:
        """Whether the myocardium (and so the epicardial contour) is segmented."""
        return self.myocardium is not None

    @property
    def epicardial(self) -> tuple[int, ...]:
        """The classes inside the epicardial contour (the blood pool alone without a
        myocardium)."""
        return (self.blood_pool,) + ((self.myocardium,) if self.has_myocardium else ())

    def objective(self, requested: str = "mean") -> str:
        """The objective a search of these classes scores: ``endo`` where there is no
        epicardial contour, else ``requested``.

        Raises:
            ValueError: An unknown objective.
        """
        if requested not in OBJECTIVES:
            raise ValueError(f"unknown objective {requested!r} (one of {OBJECTIVES})")
        return requested if self.has_myocardium else "endo"

    def to_json(self) -> dict[str, Any]:
        """The manifest's and model card's form: ``classes`` by id, the roles, the
        ignore label."""
        out: dict[str, Any] = {"classes": {str(k): v for k, v in enumerate(self.names)},
                               "roles": {"blood_pool": self.blood_pool}}
        if self.myocardium is not None:
            out["roles"]["myocardium"] = self.myocardium
        if self.ignore is not None:
            out["ignore_label"] = self.ignore
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Classes:
        """Reads the classes of a manifest or model card (older ones name the classes
        only: the roles then come from the names).

        Raises:
            ValueError: The record names no classes, or roles that are not classes.
        """
        named = record.get("classes")
        if not named:
            return cls()
        names = tuple(named[str(k)] for k in range(len(named)))
        roles = record.get("roles") or {}
        blood_pool = int(roles.get("blood_pool", names.index(BLOOD_POOL_NAME)
                                   if BLOOD_POOL_NAME in names else BLOOD_POOL))
        myocardium = roles.get("myocardium", names.index(MYOCARDIUM_NAME)
                               if MYOCARDIUM_NAME in names else None)
        ignore = record.get("ignore_label")
        return cls(names, blood_pool, None if myocardium is None else int(myocardium),
                   None if ignore is None else int(ignore))


def regions(labels: np.ndarray, classes: Classes) -> dict[str, np.ndarray]:
    """The regions the challenge scores, as boolean masks of the same shape as
    ``labels``: ``endo`` (the blood pool) and, with a myocardium, ``epi`` (blood pool and
    myocardium) and ``myo``."""
    labels = np.asarray(labels)
    out = {"endo": labels == classes.blood_pool}
    if classes.has_myocardium:
        out["myo"] = labels == classes.myocardium
        out["epi"] = out["endo"] | out["myo"]
    return out


def fully_labelled(labels: np.ndarray, classes: Classes) -> bool:
    """Whether an expert mask labels every pixel (else only its blood pool is known)."""
    return classes.ignore is None or not bool((np.asarray(labels) == classes.ignore).any())
