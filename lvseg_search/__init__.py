"""lvseg-search: find the best left-ventricle segmentation network for cardiac MRI."""

__version__ = "0.1.0"
