"""A run folder written before search.json had a schema version (kept as written by the
package at 49c822c: a 2-trial Hyperband search on the tiny phantom) still reports,
resumes and exports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_before_schema_version"
TINY = Path(__file__).parents[1] / "spaces" / "tiny.toml"


def test_an_unversioned_run_folder_reports_resumes_and_exports(tiny_data, tmp_path, capsys):
    from lvseg_search.engine.run import load_run
    from lvseg_search.export import export
    from lvseg_search.report import write_report
    from lvseg_search.search import run_search

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    written = (run / "search.json").read_text()
    assert "schema_version" not in json.loads(written)
    before = load_run(run, tiny_data)
    scores = {t: trial.score for t, trial in before.trials.items()}
    assert len(scores) == 2 and before.options.augmentation.rotation_deg == 10.0
    # Reported: both trials ranked.
    report = write_report(run, overlays=False, verbose=False, data=tiny_data)
    assert list(report["table"]["trial"]) == sorted(scores, key=scores.get, reverse=True)
    # Resumed by the same command (the space as it was then: the test space has changed
    # since, and the run keeps its copy): nothing left to train, nothing changed.
    old_space = tmp_path / "tiny.toml"
    shutil.copyfile(run / "space.toml", old_space)
    assert old_space.read_bytes() != TINY.read_bytes()
    summary = run_search(tiny_data, run, str(old_space), folds=2, test_patients=1, max_epochs=2,
                         factor=2, image_size=32, batch_size=4, seed=3, steps_per_epoch=2,
                         max_trials=2, verbose=False)
    assert {r["trial_id"]: r["score"] for r in summary["completed"]} == scores
    # Its record stays unversioned; only where the data now lies is updated.
    assert json.loads((run / "search.json").read_text()) == {
        **json.loads(written), "data": str(Path(tiny_data).resolve())}
    # Exported (its fold models averaged): the card says how it trained.
    card = export(run, tmp_path / "model", ensemble=True, onnx=False, tflite=False,
                  verbose=False, data=tiny_data)
    assert card["search"]["augmentation"]["rotation_deg"] == 10.0
    assert card["cross_validation"]["dice_mean"] == max(scores.values())
