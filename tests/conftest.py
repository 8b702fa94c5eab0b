"""Shared fixtures: the real Sunnybrook subset and small synthetic phantoms."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # The suite's processes (and the searches they start, which inherit this) share the
    # machine's cores: each TensorFlow sizing its thread pools to all of them
    # oversubscribes the cores (measured: 8% more wall time on 2 cores).
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

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


TINY_SPACE = Path(__file__).parent / "spaces" / "tiny.toml"


@pytest.fixture(scope="session")
def real_run(real_prepared, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One search on the real subset, run as a user runs it (the command line in its own
    process, trials in a recycled child), shared by the tests that need a real run
    folder: the folder and the finished process (its stdout holds what was printed)."""
    out = tmp_path_factory.mktemp("real-run") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lvseg_search", "search", "--data", str(real_prepared),
         "--space", str(TINY_SPACE), "--out", str(out), "--folds", "3", "--max-epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--steps-per-epoch", "2"],
        capture_output=True, text=True)
    return out, proc


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-fold Hyperband search (5 trials, one promoted) with one held-out
    test patient. Shared: copy it before changing it."""
    from lvseg_search.search import run_search

    out = tmp_path_factory.mktemp("search") / "run"
    run_search(tiny_data, out, str(TINY_SPACE), folds=2, test_patients=1, max_epochs=2,
               factor=2, image_size=32, batch_size=4, seed=3, steps_per_epoch=3,
               verbose=False)
    return out


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system's Chromium (installed by .ci/run from Debian's packages)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium on this machine (apt-get install chromium): the report is not "
                "checked in a browser here")


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


# Fixtures whose one build is shared by the tests that use them: with the suite spread
# over processes (pytest-xdist, --dist loadgroup), their tests run in one process, so
# each finished run (or module fixture) is built once.
_SHARED = ("tiny_run", "real_run")
_MODULE_SHARED = {"test_physical_grid.py", "test_target_grid.py", "test_reliability.py",
                  "test_myocardium.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    groups = {}
    for item in items:
        group = next((name for name in _SHARED if name in item.fixturenames), None)
        if group is None and item.path.name in _MODULE_SHARED:
            group = item.path.stem
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
            groups[item.nodeid] = group
    # The longest groups first: the processes take work in this order, so the end of
    # the suite is not one long group running while the other process idles.
    order = {name: rank for rank, name in enumerate(_SHARED)}
    items.sort(key=lambda item: order.get(groups.get(item.nodeid), len(order)))


def pytest_xdist_node_collection_finished(node, ids):
    """Stops the suite where pytest-xdist lost the groups: it groups a test by a suffix
    it writes into the test's id, which pytest 9.2 ignores (pytest-xdist#1386), and each
    process would then build the shared runs again. Every test of a module-grouped file
    carries the suffix wherever it works."""
    if node.config.getoption("dist", "no") != "loadgroup":
        return
    lost = [i for i in ids if i.split("::")[0].rsplit("/", 1)[-1] in _MODULE_SHARED
            and "@" not in i]
    if lost:
        pytest.exit("pytest-xdist did not group the tests that share a finished run "
                    f"({lost[0]}; pytest-xdist#1386, pytest 9.2): install the test extra "
                    "(pip install -e '.[test]'), which pins a pytest it works with",
                    returncode=4)
