"""A stack's geometry checked, and its slice and phase indices cross-checked between
InstanceNumber and the positions and trigger times."""

import numpy as np

from lvseg_search.data.dicom_io import DicomImage
from lvseg_search.data.ingest import index_frames
from lvseg_search.data.studies import geometry_problems

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _image(number, z, t, phases=2, **kw):
    return DicomImage(pixels=np.zeros((4, 4), np.int16), instance_number=number,
                      pixel_spacing_mm=(1.0, 1.0), slice_thickness_mm=8.0,
                      image_position=(10.0, 20.0, z), image_orientation=kw.pop("iop", AXIAL),
                      trigger_time_ms=t, cardiac_number_of_images=phases, **kw)


def _stack():
    # 3 slices 10 mm apart x 2 phases, numbered slice * 2 + phase + 1.
    return [_image(s * 2 + p + 1, 30.0 + 10 * s, 100.0 * p) for s in range(3) for p in range(2)]


def test_a_sound_stack_keeps_its_instance_numbering():
    indexing = index_frames(_stack())
    assert indexing.source == "instance numbers" and not indexing.notes
    assert indexing.indices == [(s, p) for s in range(3) for p in range(2)]
    assert geometry_problems(_stack()) == []


def test_numbering_that_contradicts_positions_gives_way_to_them():
    images = _stack()
    # The scanner numbered the stack backwards (apex first) and phases against time.
    images = [_image(im.instance_number, 50.0 - (im.image_position[2] - 30.0),
                     200.0 - im.trigger_time_ms) for im in images]
    swapped = [images[1], images[0], *images[2:]]
    swapped[0] = _image(2, 50.0, 150.0)  # numbered phase 1 of slice 0, but earliest there
    indexing = index_frames(swapped)
    assert indexing.source == "positions and trigger times"
    assert "phase numbers run against trigger times" in indexing.notes[0]
    # Slices ranked along the normal, phases by trigger time.
    assert indexing.indices[0] == (2, 0) and indexing.indices[1] == (2, 1)


def test_numbering_that_puts_two_slices_at_one_position_gives_way():
    images = _stack()
    images[2] = _image(3, 30.0, 0.0)  # numbered slice 1, lies at slice 0's position
    indexing = index_frames(images)
    assert indexing.source == "positions and trigger times"
    assert "one position" in indexing.notes[0] or "different positions" in indexing.notes[0]


def test_geometry_problems_are_named():
    missing = [_image(1, 0.0, 0.0, has_position=False), *_stack()[1:]]
    assert "1 of 6 image(s) have no ImagePositionPatient" in geometry_problems(missing)[0]
    origin = [_image(n + 1, 0.0, 0.0) for n in range(2)]
    origin = [DicomImage(**{**im.__dict__, "image_position": (0.0, 0.0, 0.0)}) for im in origin]
    assert "lie at the origin" in geometry_problems(origin)[0]
    tilted = [*_stack()[:5], _image(6, 50.0, 100.0, iop=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0))]
    assert "several orientations" in geometry_problems(tilted)[0]
    flat = [_image(s * 2 + p + 1, 30.0, 100.0 * p) for s in range(3) for p in range(2)]
    assert "name several slices" in geometry_problems(flat)[0]
    # Without usable positions the numbering is all there is, and says so.
    indexing = index_frames(missing, positions_usable=False)
    assert indexing.source == "instance numbers" and "alone" in indexing.notes[0]
