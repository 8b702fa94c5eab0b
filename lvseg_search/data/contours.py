"""Sunnybrook expert contour files: parsing, validation and rasterization.

A contour file holds one ``x y`` pair of floats per line in pixel coordinates,
x = column and y = row. A pixel belongs to the region when its centre lies inside
the polygon; scikit-image's ``polygon2mask`` tests exactly that.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from skimage.draw import polygon2mask

from lvseg_search.errors import UserError


def read_contour(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Reads and validates a contour file.

    Args:
        path: The ``*-icontour-manual.txt`` or ``*-ocontour-manual.txt`` file.
        shape: ``(rows, columns)`` of the image the contour belongs to.

    Returns:
        ``float64`` array of shape ``[N, 2]`` with columns ``x`` (column), ``y`` (row).

    Raises:
        UserError: The file is unreadable, malformed, has fewer than 3 points,
            non-finite values, or points outside the image.
    """
    try:
        text = Path(path).read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read contour file ({exc.__class__.__name__}); "
                        "check the file exists and is plain text") from None
    points = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{path}:{lineno}: expected two numbers 'x y', got {line.strip()!r}")
        try:
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected two numbers 'x y', "
                            f"got {line.strip()!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"{path}:{lineno}: contour point is not a finite number "
                            f"({line.strip()}); fix or remove the contour")
        points.append((x, y))
    if len(points) < 3:
        raise UserError(f"{path}: contour has {len(points)} point(s), a polygon needs at "
                        "least 3; fix or remove the file")
    pts = np.asarray(points, dtype=np.float64)
    rows, cols = shape
    outside = ((pts[:, 0] < -0.5) | (pts[:, 0] > cols - 0.5)
               | (pts[:, 1] < -0.5) | (pts[:, 1] > rows - 0.5))
    if outside.any():
        i = int(np.argmax(outside))
        raise UserError(f"{path}: contour point {i + 1} (x={pts[i, 0]:g}, y={pts[i, 1]:g}) lies "
                        f"outside the {cols}x{rows} image; check it belongs to this image")
    return pts


def rasterize(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fills a contour polygon: a pixel is inside when its centre is.

    Args:
        points: ``[N, 2]`` array of ``x`` (column), ``y`` (row).
        shape: ``(rows, columns)`` of the output mask.

    Returns:
        Boolean mask of ``shape``.
    """
    return polygon2mask(shape, points[:, ::-1])


def shoelace_area(points: np.ndarray) -> float:
    """Returns the polygon's area in square pixels (shoelace formula)."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def perimeter(points: np.ndarray) -> float:
    """Returns the closed polygon's perimeter in pixels."""
    return float(np.sum(np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1)))


def write_contour(path: Path, points: np.ndarray) -> None:
    """Writes a contour in the Sunnybrook text format (two decimals, ``x y`` per line)."""
    Path(path).write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in points), encoding="ascii")
