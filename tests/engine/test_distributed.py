"""keras-tuner chief/worker search on loopback, and MirroredStrategy within a trial."""

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from lvseg_search.engine.run import RESULT

TINY = Path(__file__).parents[1] / "spaces" / "tiny.toml"




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_trial_that_fails_on_a_worker_keeps_its_reason(tiny_data, tmp_path):
    from lvseg_search.engine.run import load_run, summarize_trials
    from lvseg_search.reporting.table import unfinished

    port = _free_port()
    out = tmp_path / "run"
    base = [sys.executable, "-m", "lvseg_search", "search", "--out", str(out)]
    chief = subprocess.Popen(
        base + ["--data", str(tiny_data), "--space", str(TINY.with_name("diverging.toml")),
                "--folds", "2", "--max-epochs", "2", "--factor", "2", "--image-size", "32",
                "--batch-size", "4", "--steps-per-epoch", "2", "--chief", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.run(base + ["--worker", f"127.0.0.1:{port}", "--connect-timeout", "120"],
                            capture_output=True, text=True, timeout=600)
    chief_log = chief.communicate(timeout=120)[0]
    assert chief.returncode == 0 and worker.returncode == 0, chief_log[-2000:]
    failed = summarize_trials(out)["failed"]
    assert failed  # learning rate 1000 diverges
    for f in failed:
        # The chief's own record has no reason: keras-tuner's gRPC trial drops it.
        stored = json.loads((out / "tuner" / f"trial_{f['trial_id']}" / "trial.json")
                            .read_text())
        assert not stored["message"]
        assert "loss became NaN" in f["message"]
    reasons = {p["trial"]: p["reason"] for p in unfinished(load_run(out))}
    assert all("loss became NaN" in reasons[f["trial_id"]] for f in failed)


def test_worker_without_a_chief_fails_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lvseg_search", "search", "--out", str(tmp_path / "run"),
         "--worker", f"127.0.0.1:{_free_port()}", "--connect-timeout", "1"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lvseg-search")]
    assert len(errors) == 1 and "no chief answers at 127.0.0.1" in errors[0]
    assert "Traceback" not in proc.stderr


def test_one_search_trains_under_mirrored_strategy_on_two_logical_cpus(tiny_data, tmp_path):
    code = textwrap.dedent(f"""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from lvseg_search.search import run_search
        s = run_search({str(tiny_data)!r}, {str(tmp_path / "run")!r}, {str(TINY)!r},
                       strategy="mirrored", folds=2, max_epochs=3, factor=4, max_trials=1,
                       image_size=32, batch_size=4, verbose=False)
        print("RESULT", json.dumps({{"replicas": s["replicas"],
                                    "completed": len(s["completed"])}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result == {"replicas": 2, "completed": 1}
    fold = json.loads(next((tmp_path / "run").glob("tuner/trial_*/fold_0/" + RESULT))
                      .read_text())
    losses = fold["history"]["loss"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_two_workers_share_the_trials_and_a_lost_one_s_trial_goes_to_the_other(
        tiny_data, tmp_path):
    """A chief and two workers on loopback. Worker w1 is killed in the middle of a
    trial: after --worker-timeout the chief gives that trial to w0, which keeps the fold
    already finished, and the search ends with every trial complete, each other trial
    run once, by one worker, the final stage's finalists included (they are handed out
    once screening has ended, and continue the screening trials' weights)."""
    import os
    import signal
    import time

    port = _free_port()
    out = tmp_path / "run"
    base = [sys.executable, "-m", "lvseg_search", "search", "--out", str(out)]
    chief = subprocess.Popen(
        base + ["--data", str(tiny_data), "--space", str(TINY), "--folds", "2",
                "--max-epochs", "2", "--factor", "2", "--image-size", "32", "--batch-size",
                "4", "--chief", f"127.0.0.1:{port}", "--worker-timeout", "5",
                "--finalists", "1", "--final-epochs", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def worker(name):
        return subprocess.Popen(base + ["--worker", f"127.0.0.1:{port}", "--tuner-id", name,
                                        "--connect-timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # w1 first, so that it takes the first trial; w0 joins as w1 trains it.
    w1 = worker("w1")
    w0 = worker("w0")
    deadline = time.monotonic() + 300
    held = None
    while held is None and w1.poll() is None and time.monotonic() < deadline:
        for first in out.glob("tuner/trial_*/fold_0/" + RESULT):
            if (json.loads(first.read_text())["tuner_id"] == "w1"
                    and not (first.parent.parent / "fold_1" / RESULT).exists()):
                held = first.parent.parent
        time.sleep(0.02)
    os.kill(w1.pid, signal.SIGKILL)  # in the trial's second fold
    w1_log = w1.communicate()[0]
    assert held is not None, w1_log[-3000:]
    kept = (held / "fold_0" / RESULT).stat().st_mtime_ns
    w0_log = w0.communicate(timeout=600)[0]
    chief_log = chief.communicate(timeout=120)[0]
    assert chief.returncode == 0, chief_log[-3000:]
    assert w0.returncode == 0, w0_log[-3000:]
    assert "loopback only" in chief_log and "Top" in chief_log
    lost = held.name.removeprefix("trial_")
    assert ("chief: worker w1 sent no heartbeat for" in chief_log
            and f"its trial {lost} goes to the next worker" in chief_log), chief_log[-3000:]
    stored = [json.loads(p.read_text()) for p in out.glob("tuner/trial_*/trial.json")]
    trials = {t["trial_id"]: t["status"] for t in stored}
    finals = [t for t in stored if t["hyperparameters"]["values"].get("tuner/final")]
    # Hyperband's 5 screening trials, then the best configuration (the test space has no
    # default network) trained on to 3 epochs, going on from its screening trial's weights.
    assert len(finals) == 1 and len(trials) == 6
    assert set(trials.values()) == {"COMPLETED"}
    values = finals[0]["hyperparameters"]["values"]
    parent = values["tuner/trial_id"]
    assert values["tuner/epochs"] == 3 and values["tuner/initial_epoch"] in (1, 2)
    for k in range(2):
        result = json.loads((out / "tuner" / f"trial_{finals[0]['trial_id']}" / f"fold_{k}"
                             / RESULT).read_text())
        assert result["resumed_from"].startswith(f"trial_{parent}/fold_{k}/")
        assert len(result["history"]["val_dice"]) == 3 - values["tuner/initial_epoch"]
    # Each trial started once, by one worker, but the lost one: by both.
    started = [re.findall(r"^trial (\d+): epochs", log, re.M) for log in (w0_log, w1_log)]
    assert lost in started[0] and lost in started[1]
    assert sorted(started[0] + started[1]) == sorted([*trials, lost])
    # w0 finished the lost trial from its second fold on: the first was kept.
    assert (held / "fold_0" / RESULT).stat().st_mtime_ns == kept
    assert json.loads((held / "fold_1" / RESULT).read_text())["tuner_id"] == "w0"
    for t in trials:
        ids = {json.loads(p.read_text())["tuner_id"]
               for p in (out / "tuner" / f"trial_{t}").glob("fold_*/" + RESULT)}
        assert ids == ({"w1", "w0"} if t == lost else {"w0"} if t not in started[1]
                       else {"w1"})
