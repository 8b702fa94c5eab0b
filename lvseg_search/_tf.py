"""Lazy TensorFlow import, so modules that do not need it start fast and stay
importable on machines without TensorFlow (for example a JAX-only GPU box)."""

import logging
import os
import sys
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


def exit_without_teardown(code: int) -> None:
    """Ends this process now if TensorFlow is loaded, else returns.

    The interpreter's normal exit spends over a second tearing down TensorFlow's
    objects and threads (a tenth of a small search). Call this only once every output
    is written and closed: buffered streams and logs are flushed, nothing else runs.
    """
    if "tensorflow" not in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
