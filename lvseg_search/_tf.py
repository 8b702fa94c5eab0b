"""Lazy TensorFlow import, so modules that do not need it start fast and stay
importable on machines without TensorFlow (for example a JAX-only GPU box)."""

import os
from types import ModuleType

_module: ModuleType | None = None


def tf() -> ModuleType:
    """Returns the ``tensorflow`` module, imported on first use with quiet C++ logs."""
    global _module
    if _module is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow

        _module = tensorflow
    return _module
