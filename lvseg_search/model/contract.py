"""The serving contract (version 2) of the deployable model: the names of its inputs
and signatures, shared by the model's assembly, its exported formats and the model card.
"""

from __future__ import annotations

CONTRACT_VERSION = 2
RAW = "raw"  # int16 [batch, H, W]: stored pixel values
SPACING = "pixel_spacing_mm"  # float32 [batch, 2]: row, column
ROI_CENTRE = "roi_centre_mm"  # float32 [batch, 2]: the third input of AT_CENTRE
AT_CENTRE = "serve_at_centre"  # the signature that takes it
# Where the network's field of view is cut: around the image centre, or around the LV
# that earlier passes of the network find.
ROI_MODES = ("centre", "localized")
