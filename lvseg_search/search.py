"""``lvseg-search search``: a cross-validated Hyperband search into ``results/NAME``.

Layout of a run folder::

    search.json        the resolved options (a re-run with the same options resumes)
    space.toml         a copy of the search space file, so that report, export and
                       workers need not find the original (another folder or machine)
    splits.json        the patient-grouped folds and held-out test patients
    tuner/             keras-tuner's project: oracle.json, trial_<id>/trial.json (and
                       failure.txt, why it failed), and per fold,
                       trial_<id>/fold_<k>/{checkpoint.weights.h5,result.json}
    tensorboard/       HParams config, one session per finished trial, fold curves
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lvseg_search import atomic, manifest, splits
from lvseg_search.errors import UserError
from lvseg_search.pipeline import PipelineConfig
from lvseg_search.space import SearchSpace, check_image_size, load_space

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SEARCH_FILE = "search.json"
SPACE_FILE = "space.toml"
PROJECT = "tuner"
# Options a splits file (--splits) decides instead of the command line.
SPLIT_OPTIONS = ("folds", "test_patients", "test_ids")
# Options that only size the search, not how a trial trains: a run may resume with others.
BUDGET_OPTIONS = ("max_trials", "hyperband_iterations")
# Training augmentation (flips always): the pipeline's defaults unless the space sets them.
AUGMENT_DEFAULTS = {"augment_rotation_deg": PipelineConfig.max_rotation_deg,
                    "augment_scale": PipelineConfig.max_scale,
                    "augment_shift": PipelineConfig.max_shift,
                    "augment_intensity": PipelineConfig.intensity}
# steps_per_epoch 0: an epoch is one pass over the fold's training slices.
DEFAULTS = {"max_epochs": 9, "factor": 3, "hyperband_iterations": 1, "image_size": 128,
            "batch_size": 8, "folds": 3, "normalization": "zscore", "steps_per_epoch": 0,
            **AUGMENT_DEFAULTS}


@dataclass(frozen=True)
class SearchOptions:
    """Resolved options of one search (command line over space defaults over ours)."""

    data: str
    space: str
    space_digest: str
    folds: int
    test_patients: int
    test_ids: tuple[str, ...]
    max_epochs: int
    factor: int
    hyperband_iterations: int
    image_size: int
    batch_size: int
    normalization: str
    seed: int
    precision: str
    jit: bool
    max_trials: int | None
    # Run folders written before augmentation was an option trained with these.
    augment_rotation_deg: float = 10.0
    augment_scale: float = 0.1
    augment_shift: float = 0.0
    augment_intensity: float = 0.1
    # Run folders written before it was an option trained one pass per epoch.
    steps_per_epoch: int = 0
    # manifest.identity of the data; empty in run folders written before it was kept.
    data_digest: str = ""

    def pipeline(self, batch_size: int | None = None) -> PipelineConfig:
        """The search's pipeline settings (``.training()`` adds shuffling and the
        augmentation given here).

        Args:
            batch_size: Images per batch (default: the search's).
        """
        return PipelineConfig(
            image_size=self.image_size, normalization=self.normalization,
            batch_size=batch_size or self.batch_size, seed=self.seed,
            max_rotation_deg=self.augment_rotation_deg, max_scale=self.augment_scale,
            max_shift=self.augment_shift, intensity=self.augment_intensity)


def resolve_options(space: SearchSpace, data: Path, **given: Any) -> SearchOptions:
    """Merges command-line values (None = not given) with the space's and our defaults.

    Raises:
        UserError: An option is out of range.
    """
    merged = {key: given.get(key) if given.get(key) is not None
              else space.search.get(key, default) for key, default in DEFAULTS.items()}
    for key in ("max_epochs", "image_size", "batch_size", "hyperband_iterations"):
        if merged[key] < 1:
            opt = "--iterations" if key == "hyperband_iterations" else f"--{key.replace('_', '-')}"
            raise UserError(f"{opt}: {merged[key]} must be at least 1")
    if merged["steps_per_epoch"] < 0:
        raise UserError(f"--steps-per-epoch: {merged['steps_per_epoch']} must be 0 (one pass "
                        "over each fold's training slices) or more")
    if given.get("max_trials") is not None and given["max_trials"] < 1:
        raise UserError(f"--max-trials: {given['max_trials']} must be at least 1")
    if merged["factor"] < 2:
        raise UserError(f"--factor: {merged['factor']} must be at least 2")
    precision = given.get("precision") or "float32"
    if precision not in PRECISIONS:
        raise UserError(f"--precision: unknown {precision!r}; choose {', '.join(PRECISIONS)}")
    check_image_size(space, merged["image_size"])
    return SearchOptions(
        data=str(Path(data).resolve()), space=str(Path(space.path).resolve()),
        space_digest=space.digest,
        test_patients=int(given.get("test_patients") or 0),
        test_ids=tuple(given.get("test_ids") or ()), seed=int(given.get("seed") or 0),
        precision=precision, jit=bool(given.get("jit")), max_trials=given.get("max_trials"),
        **merged)


def _prepare_run(out: Path, options: SearchOptions, overwrite: bool,
                 splits_file: Path | None) -> tuple[SearchOptions, dict[str, Any]]:
    """Creates or resumes a run folder.

    Returns:
        The options as recorded (with the data's digest, ``splits_file``, its folds and test
        patients) and the run's splits.

    Raises:
        UserError: The folder holds another search or something else, or the splits file
            is bad or differs from the splits of the search being resumed.
    """
    m = manifest.load(Path(options.data))
    options = replace(options, data_digest=manifest.identity(m))
    counts = {p["patient_id"]: p["slices"] for p in m["patients"]}
    given_split = None
    if splits_file is not None:
        given_split = splits.load(splits_file, list(counts))
        options = replace(options, folds=len(given_split["folds"]), test_patients=0,
                          test_ids=tuple(given_split["test"]))
    record = out / SEARCH_FILE
    if record.is_file() and not overwrite:
        previous = json.loads(record.read_text(encoding="utf-8"))
        # An option added since the run was written counts as the value it trained with.
        legacy = {f.name: f.default for f in fields(SearchOptions) if f.default is not MISSING}
        # Compared elsewhere: the space by its contents (space_digest), not by the path
        # (older runs hold relative ones); a splits file by its folds, below, not by the
        # recorded counts (older runs hold the command line's defaults); the data by its
        # contents where the run recorded them, so it may move. A new budget extends or
        # caps the search.
        skip = ("space", "data", "data_digest", *BUDGET_OPTIONS,
                *(SPLIT_OPTIONS if given_split is not None else ()))
        changed = [k for k, v in asdict(options).items() if k not in skip
                   and json.dumps(previous.get(k, legacy.get(k))) != json.dumps(v)]
        same_data = (previous["data_digest"] == options.data_digest
                     if previous.get("data_digest") else previous.get("data") == options.data)
        if not same_data:
            changed.insert(0, "data")
        if changed:
            raise UserError(f"{out}: holds a search with other options ({', '.join(changed)}); "
                            "re-run with the same options to resume, or choose another "
                            "--out, or pass --overwrite")
        split = splits.load(out / splits.FILENAME, list(counts))
        if given_split is not None and (given_split["folds"], given_split["test"]) != (
                split["folds"], split["test"]):
            raise UserError(f"--splits: {splits_file} differs from the splits of the search in "
                            f"{out}; resume with its own {out / splits.FILENAME}, or choose "
                            "another --out, or pass --overwrite")
        updated = {k: v for k, v in asdict(options).items()
                   if k in ("data", "data_digest", *BUDGET_OPTIONS) and previous.get(k) != v}
        if updated:
            atomic.write_json(record, {**previous, **updated})
        return options, split
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: output folder (--out) exists and holds no search; choose "
                        "another folder or pass --overwrite")
    if overwrite and out.exists():
        shutil.rmtree(out)
    if given_split is not None:
        split = given_split
    else:
        split = splits.make_splits(counts, options.folds, test_patients=options.test_patients,
                                   test_ids=options.test_ids, seed=options.seed)
    out.mkdir(parents=True, exist_ok=True)
    splits.save(out / splits.FILENAME, split)
    atomic.write_text(out / SPACE_FILE, Path(options.space).read_bytes().decode("utf-8"))
    # search.json last: it marks the folder as a search.
    atomic.write_json(record, asdict(options))
    return options, split


def read_options(out: Path, missing: str) -> SearchOptions:
    """The resolved options stored in a run folder.

    Args:
        out: The run folder.
        missing: What to tell the user when the folder holds no search.

    Raises:
        UserError: No options file in ``out``.
    """
    record = Path(out) / SEARCH_FILE
    if not record.is_file():
        raise UserError(f"{out}: no {SEARCH_FILE} here; {missing}")
    stored = json.loads(record.read_text(encoding="utf-8"))
    return SearchOptions(**{**stored, "test_ids": tuple(stored["test_ids"])})


def run_space(out: Path, options: SearchOptions) -> SearchSpace:
    """The search space of a run folder: its own copy, else (runs written before it kept
    one) the file its options name.

    Raises:
        UserError: The space cannot be read, or the named file changed since the search
            started.
    """
    copy = Path(out) / SPACE_FILE
    if copy.is_file():
        return replace(load_space(copy), name=Path(options.space).stem)
    if not Path(options.space).is_file():
        raise UserError(f"{out}: its search space {options.space} is not there; run from the "
                        "folder the search was started in, or put the file back")
    sp = load_space(options.space)
    if sp.digest != options.space_digest:
        raise UserError(f"{options.space}: the search space file changed since the search "
                        f"in {out} started; put back the version it used")
    return sp


def relocate_data(out: Path, options: SearchOptions, data: Path) -> SearchOptions:
    """A run's options with its data read from ``data`` (moved, or mounted elsewhere).

    Raises:
        UserError: ``data`` is not a prepared folder, or holds other data than the run's
            (for runs written before the data's digest was kept: lacks its patients).
    """
    m = manifest.load(Path(data))
    if options.data_digest:
        other = manifest.identity(m) != options.data_digest
    else:
        split = splits.load(Path(out) / splits.FILENAME)
        wanted = {pid for fold in split["folds"] for part in ("train", "val")
                  for pid in fold[part]} | set(split.get("test", []))
        other = bool(wanted - {p["patient_id"] for p in m["patients"]})
    if other:
        raise UserError(f"--data: {data} holds other data than the search in {out} used; "
                        "pass the folder its data was prepared into")
    return replace(options, data=str(Path(data).resolve()))


def _load_run(out: Path, data: Path | None) -> tuple[SearchOptions, SearchSpace,
                                                     dict[str, Any]]:
    """Options, space and splits of an existing run folder (for workers)."""
    options = read_options(out, "start the chief with the same --out first (the results "
                                "folder must be shared with the workers)")
    sp = run_space(out, options)
    if data is not None:
        options = relocate_data(out, options, data)
    m = manifest.load(Path(options.data))
    return options, sp, splits.load(out / splits.FILENAME,
                                     [p["patient_id"] for p in m["patients"]])


def run_search(data: Path | None, out: Path, space: str = "quick", *, overwrite: bool = False,
               splits_file: Path | None = None, verbose: bool = True,
               chief: str | None = None, worker: str | None = None,
               tuner_id: str | None = None, gpu: str | None = None,
               strategy: str | None = None, connect_timeout: float = 30.0,
               recycle_every: int | None = None, **given: Any) -> dict[str, Any]:
    """Runs (or resumes) a cross-validated Hyperband search.

    Args:
        data: Prepared data folder (workers read it from the run folder when None).
        out: Run folder (``results/NAME``), shared by the chief and its workers.
        space: Search space name or ``.toml`` path.
        overwrite: Start afresh even if ``out`` holds a search.
        splits_file: Use these splits instead of making new ones.
        verbose: Print progress.
        chief: ``HOST:PORT`` to serve the oracle on (this process runs no trial).
        worker: ``HOST:PORT`` of the chief to take trials from.
        tuner_id: This worker's id (default: host name and process id).
        gpu: Pin this process to these GPU(s) (``CUDA_VISIBLE_DEVICES``).
        strategy: ``mirrored`` to train each fold model over all visible GPUs.
        connect_timeout: Seconds a worker waits for its chief.
        recycle_every: Run the trials in a fresh child process every this many trials
            (None: all in this process). TensorFlow keeps every trained model's graphs
            for the life of the process; a new process resumes the search from disk
            and starts with none.
        **given: Search options (see ``SearchOptions``); None means "not given".

    Returns:
        A summary: trials (completed, failed), wall and batch seconds, per-trial log.

    Raises:
        UserError: Bad data, options or run folder, or an unreachable chief.
    """
    from lvseg_search import distribute

    start = time.perf_counter()
    out = Path(out)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if chief and worker:
        raise UserError("--chief and --worker: a process is one or the other")
    if chief:
        host, port = distribute.parse_address(chief, "--chief", distribute.LOOPBACK)
        distribute.check_port_free(host, port)
        distribute.configure("chief", host, port)
    elif worker:
        host, port = distribute.parse_address(worker, "--worker")
        distribute.configure("worker", host, port, tuner_id)
    role = distribute.role_from_environment()
    if recycle_every is not None and recycle_every < 1:
        raise UserError(f"--recycle-every: {recycle_every} must be at least 1 (or 0: never)")
    child = None
    if recycle_every and role is None:
        from lvseg_search.recycle import SearchProcess

        child = SearchProcess()  # loads TensorFlow while this process prepares the run
    try:
        if role == "worker":
            distribute.wait_for_chief(os.environ[distribute.ENV_IP],
                                      int(os.environ[distribute.ENV_PORT]), connect_timeout)
            options, sp, split = _load_run(out, data)
        else:
            sp = load_space(space)
            if data is None:
                raise UserError("--data: required (only workers read it from the run folder)")
            if splits_file is not None:
                clash = [f"--{k.replace('_', '-')}" for k in SPLIT_OPTIONS if given.get(k)]
                if clash:
                    raise UserError(f"--splits: {splits_file} fixes the folds and the test "
                                    f"patients; drop {' and '.join(clash)}")
            options = resolve_options(sp, data, **given)
            options, split = _prepare_run(out, options, overwrite, splits_file)
    except BaseException:
        if child is not None:
            child.cancel()
        raise
    if role == "chief":
        host = os.environ[distribute.ENV_IP]
        print(f"chief: serving the oracle on {host}:{os.environ[distribute.ENV_PORT]}"
              + (" (loopback only: pass --chief 0.0.0.0:PORT to accept other machines)"
                 if host.startswith("127.") or host == "localhost" else ""), flush=True)
    if child is not None:
        from lvseg_search.recycle import search_recycled

        summary = search_recycled(child, recycle_every, verbose, out=out, sp=sp,
                                  options=options, split=split, strategy=strategy)
    else:
        summary = _search(out, sp, options, split, verbose=verbose, strategy=strategy,
                          role=role)
    summary["wall_seconds"] = time.perf_counter() - start
    if role != "worker":
        print_top(summary, len(split["folds"]))
    return summary


def _search(out: Path, sp: SearchSpace, options: SearchOptions, split: dict[str, Any], *,
            verbose: bool, strategy: str | None, role: str | None,
            trial_budget: int | None = None, header: bool = True,
            on_share_ending: Callable[[], None] | None = None) -> dict[str, Any]:
    import keras

    from lvseg_search import hparams
    from lvseg_search.cv import CrossValidation
    from lvseg_search.distribute import make_strategy
    from lvseg_search.hypermodel import SegmentationHyperModel
    from lvseg_search.tuner import CVHyperband

    # The hypermodel sets Keras's process-wide dtype policy (--precision) at each build,
    # keras-tuner's first one included; the caller's is put back at the end for code that
    # goes on building models in this process.
    previous_policy = keras.mixed_precision.dtype_policy()
    m = manifest.load(Path(options.data))
    dist = make_strategy(strategy)
    replicas = dist.num_replicas_in_sync if dist is not None else 1
    if replicas > 1:
        print(f"mirrored strategy over {replicas} devices: batch size {options.batch_size} "
              f"per replica, {options.batch_size * replicas} per step", flush=True)
    config = options.pipeline(options.batch_size * replicas)
    cv = CrossValidation(Path(options.data), split, config, replicas=replicas,
                         steps_per_epoch=options.steps_per_epoch)
    hypermodel = SegmentationHyperModel(sp, options.image_size, num_classes=len(m["classes"]),
                                        jit_compile=options.jit, precision=options.precision)
    # keras-tuner announces a resume with a bare print; ours below says more.
    with contextlib.redirect_stdout(io.StringIO()):
        tuner = CVHyperband(cv, seed=options.seed, verbose=verbose, hypermodel=hypermodel,
                            max_epochs=options.max_epochs, factor=options.factor,
                            hyperband_iterations=options.hyperband_iterations,
                            distribution_strategy=dist, directory=str(out), project_name=PROJECT,
                            tensorboard_dir=out / hparams.DIRNAME, trial_budget=trial_budget,
                            on_share_ending=on_share_ending)
    is_chief = role == "chief"
    logdir = out / hparams.DIRNAME
    if role != "worker" and not any(logdir.glob("events.out.tfevents.*")):
        hparams.write_config(logdir, sp, cv.n_folds, options.max_epochs)
    if is_chief or not hasattr(tuner.oracle, "stub"):
        # A cap on Hyperband's own schedule, for a fixed budget (the oracle owns it).
        tuner.oracle.max_trials = options.max_trials
        # A resumed oracle took its iterations from its saved state; the run's options may
        # have raised them since, to extend a finished schedule.
        tuner.oracle.hyperband_iterations = options.hyperband_iterations
    if verbose and not is_chief and header:
        print(f"search: space {sp.name}, {cv.n_folds} patient-grouped folds, "
              f"{len(split['test'])} held-out test patient(s), max {options.max_epochs} "
              f"epochs, factor {options.factor}, images {options.image_size}px -> {out}",
              flush=True)
        done = len(list((out / PROJECT).glob("trial_*/trial.json")))
        if done:
            budget = (f", {options.max_trials} in all (--max-trials)" if options.max_trials
                      else "")
            print(f"resuming: {done} trial(s) already in {out / PROJECT}{budget}", flush=True)
    # Python's automatic collector stalls training for 0.3 to 1 s at a time, walking the
    # ~0.5 million objects of TensorFlow and Keras. Those live as long as the process,
    # so they are set aside (freeze), and cycles are collected once per trial instead
    # (tuner.release_memory), where each pass sees only that trial's objects.
    automatic = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        tuner.search(verbose=0)
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        raise UserError(f"{out}: too many trials in a row failed; check the data and the "
                        f"space (last error: {str(exc).strip().splitlines()[-1]})") from None
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
        if automatic:
            gc.enable()
        gc.unfreeze()
    summary = summarize(out)
    summary["batch_seconds"] = tuner.batch_seconds
    summary["trial_log"] = tuner.trial_log
    summary["replicas"] = replicas
    summary["recycle"] = tuner.recycle
    return summary


def summarize(out: Path) -> dict[str, Any]:
    """Completed trials (best first) and failed ones, read from the run folder (so the
    chief, a worker or a later ``report`` all see the same search)."""
    from keras_tuner.engine.trial import Trial

    from lvseg_search.tuner import trial_message

    folders = {}  # trial -> its folder, as found on disk
    for path in sorted((Path(out) / PROJECT).glob("trial_*/trial.json")):
        folders[Trial.load(str(path))] = path.parent
    trials = list(folders)
    completed = sorted((t for t in trials if t.status == "COMPLETED" and t.score is not None),
                       key=lambda t: t.score, reverse=True)
    rows = []
    for t in completed:
        metrics = {name: t.metrics.get_last_value(name) for name in t.metrics.metrics}
        rows.append({"trial_id": t.trial_id, "score": t.score, "metrics": metrics,
                     "hyperparameters": dict(t.hyperparameters.values)})
    failed = [{"trial_id": t.trial_id, "status": t.status,
               "message": trial_message(folders[t], t)}
              for t in trials if t.status in ("FAILED", "INVALID")]
    return {"completed": rows, "failed": failed, "n_trials": len(trials)}


def print_top(summary: dict[str, Any], n_folds: int, top: int = 5) -> None:
    """Prints the best trials as a table."""
    rows = summary["completed"][:top]
    print(f"\n{len(summary['completed'])} trials completed, {len(summary['failed'])} failed. "
          f"Top {len(rows)} by CV Dice:")
    print(f"{'trial':>6} {'CV Dice':>15} {'folds':>{6 * n_folds}} {'epochs':>6}  network")
    for r in rows:
        m, hp = r["metrics"], r["hyperparameters"]
        folds = " ".join(f"{m.get(f'val_dice_fold_{k}', float('nan')):.3f}"
                         for k in range(n_folds))
        net = ("lab FCN" if hp["architecture"] == "lab_fcn" else
               f"depth {hp['depth']} x{hp['base_filters']} k{hp['kernel_size']} "
               f"{hp['decoder']} {hp['downsampling']} {hp['loss']} lr {hp['learning_rate']:.1e}"
               + (" cosine" if hp.get("lr_schedule") == "cosine" else ""))
        print(f"{r['trial_id']:>6} {r['score']:>7.3f} +- {m.get('val_dice_std', 0):.3f} "
              f"{folds:>{6 * n_folds}} {int(m.get('best_epoch', 0)):>6}  {net}")
