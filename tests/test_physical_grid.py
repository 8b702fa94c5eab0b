"""The physical grid end to end: patients of other matrices and non-square images go
through search, export and predict, and the grid is recorded and resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lvseg_search.cli import main
from lvseg_search.errors import UserError
from lvseg_search.search import run_search

TINY = Path(__file__).parent / "spaces" / "tiny.toml"


def _crop_columns(patient_dicoms: Path, contours: Path, start: int, width: int) -> None:
    """Cuts a patient's images to ``width`` columns from ``start`` and moves its contours
    with them (x is the column)."""
    for path in patient_dicoms.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[:, start:start + width]
        ds.PixelData = np.ascontiguousarray(pixels).astype("<i2").tobytes()
        ds.Columns = width
        ds.save_as(path)
    for path in contours.rglob("*.txt"):
        points = np.loadtxt(path, ndmin=2)
        points[:, 0] -= start
        np.savetxt(path, points, fmt="%.2f")


@pytest.fixture(scope="module")
def non_square(small_phantom, tmp_path_factory) -> tuple[Path, Path]:
    """The small phantom with one patient cut to 48 x 36 (the others 48 x 48)."""
    from lvseg_search.prepare import prepare

    root = tmp_path_factory.mktemp("nonsquare")
    source = root / "phantom"
    shutil.copytree(small_phantom, source)
    _crop_columns(source / "dicoms" / "SYN0002", source / "contourfiles" / "SYN-2", 6, 36)
    prepare(source, root / "data", progress=False, allow_mixed_sizes=True)
    return source, root / "data"


def test_any_matrix_trains_scores_exports_and_predicts(non_square, tmp_path, capsys):
    source, data = non_square
    run = tmp_path / "run"
    run_search(data, run, str(TINY), folds=3, max_epochs=1, factor=2, max_trials=1,
               batch_size=4, steps_per_epoch=2, verbose=False)
    options = json.loads((run / "search.json").read_text())
    # Chosen from the data: the median pixel size, a grid that holds the LVs.
    assert options["spacing_mm"] > 0 and options["image_size"] % 4 == 0
    assert options["image_size"] * options["spacing_mm"] >= options["field_of_view_mm"]
    result = json.loads(next(run.glob("tuner/trial_*/fold_*/result.json")).read_text())
    assert 0.0 <= result["evaluation"]["dice"] <= 1.0
    model = tmp_path / "model"
    assert main(["export", str(run), "--out", str(model), "--no-onnx"]) == 0
    card = json.loads((model / "model_card.json").read_text())
    assert card["grid"]["spacing_mm"] == options["spacing_mm"]
    pred = tmp_path / "pred"
    assert main(["predict", str(model), str(source / "dicoms" / "SYN0002"), "--out",
                 str(pred), "--no-overlays"]) == 0
    masks = [np.load(p) for p in (pred / "masks").rglob("*.npy")]
    assert masks and all(m.shape == (48, 36) for m in masks)
    # Resuming the same command finds the same grid, so the same options.
    run_search(data, run, str(TINY), folds=3, max_epochs=1, factor=2, max_trials=1,
               batch_size=4, steps_per_epoch=2, verbose=False)
    assert json.loads((run / "search.json").read_text()) == options
    # Asking for another grid on it is refused.
    with pytest.raises(UserError, match="other options .*spacing_mm"):
        run_search(data, run, str(TINY), folds=3, max_epochs=1, factor=2, max_trials=1,
                   batch_size=4, steps_per_epoch=2, verbose=False, spacing="3.5")


def test_spacing_none_resizes_whole_images(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    run_search(tiny_data, run, str(TINY), folds=2, max_epochs=1, factor=2, max_trials=1,
               image_size=16, batch_size=4, steps_per_epoch=1, verbose=False,
               spacing="none")
    options = json.loads((run / "search.json").read_text())
    assert (options["spacing_mm"], options["image_size"]) == (0.0, 16)
    assert main(["search", "--data", str(tiny_data), "--out", str(tmp_path / "r2"),
                 "--spacing", "none", "--field-of-view", "100"]) == 2
    assert "--field-of-view: with --spacing none" in capsys.readouterr().err
    assert main(["search", "--data", str(tiny_data), "--out", str(tmp_path / "r3"),
                 "--spacing", "-1"]) == 2
    assert "--spacing: -1 must be a pixel size above 0 mm" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    # Whole images have no field of view to move: one line, exit 2, nothing written.
    assert main(["export", str(run), "--out", str(tmp_path / "model"), "--roi",
                 "localized"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--roi localized" in err and "Traceback" not in err
    assert not (tmp_path / "model").exists()
    # Exported as it is: contract 2 alone, no signature that takes a centre.
    from lvseg_search.model.formats import saved_model_runner

    assert main(["export", str(run), "--out", str(tmp_path / "model"), "--no-onnx"]) == 0
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["postprocessing"]["roi"] == "centre" and "roi_centre_mm" not in card["inputs"]
    assert not (tmp_path / "model" / "model_at_centre.tflite").exists()
    assert "also" not in card["formats"]["saved_model/"]
    serve = saved_model_runner(tmp_path / "model" / "saved_model")
    raw, spacing = np.zeros((1, 20, 24), np.int16), np.ones((1, 2), np.float32)
    assert serve(raw, spacing)["mask"].shape == (1, 20, 24) and not serve.at_centre
    with pytest.raises(ValueError, match="has no serve_at_centre signature"):
        serve(raw, spacing, np.zeros((1, 2)))


def test_a_run_folder_from_before_the_grid_resumes_as_it_trained(tiny_data, tmp_path):
    """search.json written before the physical grid (no spacing_mm, no new augmentation):
    re-running its command resumes it with whole images and its old augmentation."""
    run = tmp_path / "run"
    common = dict(folds=2, max_epochs=1, factor=2, max_trials=1, image_size=16,
                  batch_size=4, steps_per_epoch=1, verbose=False)
    run_search(tiny_data, run, str(TINY), spacing="none", **common)
    record = run / "search.json"
    current = json.loads(record.read_text())
    # As the package wrote it then: no version, the augmentation as flat augment_* keys.
    flat = {k: v for k, v in current.items() if k not in ("schema_version", "augmentation")}
    flat.update({f"augment_{k}": v for k, v in current["augmentation"].items()})
    old = {k: v for k, v in flat.items()
           if k not in ("spacing_mm", "field_of_view_mm") and not k.startswith(
               ("augment_gamma", "augment_contrast", "augment_brightness", "augment_noise",
                "augment_blur", "augment_low_resolution"))}
    record.write_text(json.dumps(old))
    run_search(tiny_data, run, str(TINY), **common)
    # Resumed as it trained, its record left as written (readers upgrade it).
    from lvseg_search.engine.run import read_options

    assert json.loads(record.read_text()) == old
    resumed = read_options(run, "")
    assert (resumed.spacing_mm, resumed.augmentation.gamma, resumed.image_size) == (0.0, 0.0, 16)
