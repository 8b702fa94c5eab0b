"""Shared fixtures: the real Sunnybrook subset and small synthetic phantoms."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REAL = Path(os.environ.get("LVSEG_SUNNYBROOK", Path(__file__).resolve().parents[2]
                           / "shared" / "data" / "sunnybrook-subset"))


@pytest.fixture(scope="session")
def real_subset() -> Path:
    """The three real Sunnybrook patients (read-only)."""
    if not (REAL / "link.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real Sunnybrook subset missing at {REAL}")
        pytest.skip(f"real Sunnybrook subset not found at {REAL}")
    return REAL


@pytest.fixture(scope="session")
def real_prepared(real_subset, tmp_path_factory) -> Path:
    """The real subset prepared into shards (once per session)."""
    from lvseg_search.prepare import prepare

    out = tmp_path_factory.mktemp("real") / "data"
    prepare(real_subset, out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory) -> Path:
    """A 3-patient, 48x48 phantom in the link.csv layout (do not modify; copy it)."""
    from lvseg_search.data.phantom import synth

    out = tmp_path_factory.mktemp("phantom") / "phantom"
    synth(out, 3, seed=7, size=48, progress=False)
    return out


@pytest.fixture
def phantom_copy(small_phantom, tmp_path) -> Path:
    """A writable copy of the small phantom, to break in bad-input tests."""
    dst = tmp_path / "input"
    shutil.copytree(small_phantom, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A 5-patient, 32x32 phantom, prepared: small enough for whole searches in tests."""
    from lvseg_search.data.phantom import synth
    from lvseg_search.prepare import prepare

    root = tmp_path_factory.mktemp("tiny")
    synth(root / "phantom", 5, seed=11, size=32, progress=False)
    prepare(root / "phantom", root / "data", progress=False)
    return root / "data"
