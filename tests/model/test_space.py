"""Search-space files: the shipped ones load; bad ones get one clear line."""

import keras_tuner as kt
import pytest

from lvseg_search.cli import main
from lvseg_search.errors import UserError
from lvseg_search.model.space import HYPERPARAMETERS, check_image_size, load_space

GOOD = "\n".join(f"{name} = {{ values = [{value}] }}" for name, value in [
    ("architecture", '"encoder_decoder"'), ("depth", 2), ("base_filters", 8),
    ("kernel_size", 3), ("convs_per_stage", 1), ("downsampling", '"max_pool"'),
    ("decoder", '"unet"'), ("normalization", '"batch"'), ("dropout", 0.0),
    ("activation", '"relu"'), ("loss", '"dice"'), ("optimizer", '"adam"'),
    ("learning_rate", 0.001)])


@pytest.mark.parametrize("name", ["quick", "default", "lab"])
def test_shipped_spaces_load_and_declare_every_hyperparameter(name):
    from lvseg_search.model.space import UNDECLARED

    space = load_space(name)
    # The default space names the newest choices; the others leave them undeclared, so
    # that their searches draw what they drew before those existed.
    expected = set(HYPERPARAMETERS) - (set() if name == "default" else set(UNDECLARED))
    assert set(space.params) == expected
    hp = kt.HyperParameters()
    values = space.register(hp)
    assert set(values) == expected


def test_a_space_without_a_block_declares_none_and_builds_plain_networks(tmp_path):
    import keras

    from lvseg_search.model.hypermodel import SegmentationHyperModel

    space = load_space("quick")
    assert "block" not in space.params
    hp = kt.HyperParameters()
    model = SegmentationHyperModel(space, 32).build(hp)
    assert "block" not in hp.values
    assert not any(isinstance(la, keras.layers.Add) for la in model.layers)


def test_lab_space_is_the_lab_fcn_only():
    space = load_space("lab")
    assert space.params["architecture"].values == ("lab_fcn",)


def _write(tmp_path, body):
    path = tmp_path / "space.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("body,needle", [
    ("[hyperparameters]\n" + GOOD + "\nwidth = { values = [3] }", "unknown hyperparameter 'width'"),
    ("[hyperparameters]\n" + GOOD.replace("depth = { values = [2] }", "depth = { values = [] }"),
     "empty 'values' list"),
    ("[hyperparameters]\n" + GOOD.replace("depth = { values = [2] }",
                                          "depth = { min = 4, max = 2 }"), "empty range"),
    ("[hyperparameters]\n" + GOOD.replace('"max_pool"', '"avg_pool"'), "unknown value 'avg_pool'"),
    ("[hyperparameters]\n" + GOOD.replace("depth = { values = [2] }\n", ""), "depth missing"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\nepochs = 3", "unknown [search] key 'epochs'"),
    ("colour = 1\n[hyperparameters]\n" + GOOD, "unknown key(s) colour"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\naugment_rotation_deg = 270",
     "augment_rotation_deg = 270 is out of range; use 0 (none) to 180"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\naugment_scale = -0.1",
     "augment_scale = -0.1 is out of range"),
    ("[hyperparameters]\n" + GOOD + '\n[search]\naugment_shift = "a lot"',
     "augment_shift must be a number"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\naugment_offset_mm = 150",
     "augment_offset_mm = 150 is out of range; use 0 (none) to 100"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\nsteps_per_epoch = -1",
     "steps_per_epoch = -1 must be 0"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\nsteps_per_epoch = 2.5",
     "steps_per_epoch must be a whole number"),
    ("[hyperparameters]\n" + GOOD + '\n[search]\nfinal_from = "rung"',
     "final_from = 'rung' is unknown; choose screening or scratch"),
    ("[hyperparameters]\n" + GOOD + "\n[search]\nmax_trials = 0",
     "max_trials = 0 must be at least 1"),
    ("[hyperparameters\n", "not valid TOML"),
    ("[hyperparameters]\n" + GOOD.replace("depth = { values = [2] }",
                                          "depth = { values = [2], max = 3 }"), "mixes"),
    ("[hyperparameters]\n" + GOOD.replace("depth = { values = [2] }",
                                          "depth = { min = 1, max = 3, stride = 1 }"),
     "unknown key(s) stride"),
])
def test_bad_space_files_are_refused(tmp_path, body, needle):
    path = _write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_space(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_bad_space_through_the_command_line(tmp_path, capsys):
    path = _write(tmp_path, "[hyperparameters]\n" + GOOD + "\nwidth = { values = [3] }")
    out = tmp_path / "run"
    code = main(["search", "--data", str(tmp_path), "--space", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown hyperparameter" in err
    assert not out.exists()


def test_unknown_space_name(capsys, tmp_path):
    code = main(["search", "--data", str(tmp_path), "--space", "huge", "--out",
                 str(tmp_path / "run")])
    assert code == 2 and "no search space 'huge'" in capsys.readouterr().err


def test_image_size_must_fit_the_deepest_network():
    with pytest.raises(UserError, match="not divisible by 16"):
        check_image_size(load_space("lab"), 100)
    check_image_size(load_space("quick"), 64)



def test_lr_schedule_may_be_left_out_and_is_then_constant(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(f"[hyperparameters]\n{GOOD}\n")
    space = load_space(path)
    assert space.params["lr_schedule"].values == ("constant",)
    assert space.register(kt.HyperParameters())["lr_schedule"] == "constant"


def test_an_unknown_lr_schedule_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(f'[hyperparameters]\n{GOOD}\nlr_schedule = {{ values = ["step"] }}\n')
    with pytest.raises(UserError, match=r"bad.toml: hyperparameter 'lr_schedule' has unknown "
                                        r"value 'step'; choose from constant, cosine"):
        load_space(path)


def test_augmentation_comes_from_the_space_and_reaches_the_training_pipeline(tmp_path):
    from dataclasses import asdict

    from lvseg_search.data.augmentation import Augmentation
    from lvseg_search.engine.options import SearchOptions, resolve_options
    from lvseg_search.engine.upgrade import upgrade

    path = _write(tmp_path, f"[hyperparameters]\n{GOOD}\n[search]\naugment_rotation_deg = 30\n"
                            "augment_scale = 0\naugment_offset_mm = 25\n")
    options = resolve_options(load_space(path), tmp_path, image_size=64)
    config = options.pipeline().training()
    aug = config.augmentation
    assert (config.augment, aug.rotation_deg, aug.scale, aug.offset_mm) == (True, 30, 0, 25)
    assert (aug.shift, aug.intensity) == (Augmentation().shift, Augmentation().intensity)
    default = resolve_options(load_space("quick"), tmp_path, image_size=64).pipeline()
    assert default.augmentation == Augmentation() and Augmentation().offset_mm > 0
    # A run folder from before these options re-reads as trained: 10 degrees, 10% zoom.
    old = {k: v for k, v in asdict(options).items()
           if k not in ("augmentation", "schema_version")}
    legacy = SearchOptions.from_record(upgrade(old)[0], "search.json").pipeline()
    assert (legacy.augmentation.rotation_deg, legacy.augmentation.scale,
            legacy.augmentation.intensity) == (10.0, 0.1, 0.1)
    assert legacy.augmentation.offset_mm == 0.0


def test_steps_per_epoch_comes_from_the_space_or_the_command_line(tmp_path):
    from lvseg_search.engine.options import resolve_options

    path = _write(tmp_path, f"[hyperparameters]\n{GOOD}\n[search]\nsteps_per_epoch = 7\n")
    assert resolve_options(load_space(path), tmp_path, image_size=64).steps_per_epoch == 7
    given = resolve_options(load_space(path), tmp_path, image_size=64, steps_per_epoch=0)
    assert given.steps_per_epoch == 0  # 0 on the command line: one pass, over the space's 7
    with pytest.raises(UserError, match=r"^--steps-per-epoch: -3 must be 0 \(one pass"):
        resolve_options(load_space("quick"), tmp_path, image_size=64, steps_per_epoch=-3)


def test_min_epochs_defaults_to_the_three_least_aggressive_brackets(tmp_path):
    from lvseg_search.engine.options import resolve_options

    quick = resolve_options(load_space("quick"), tmp_path, image_size=64)
    assert (quick.max_epochs, quick.factor, quick.min_epochs) == (12, 2, 6)  # its [search]
    # Without a space's value: max_epochs / factor**2 rounded down (three brackets), as
    # many brackets as fit in smaller budgets, at least 1; given, it is kept.
    plain = load_space(_write(tmp_path, f"[hyperparameters]\n{GOOD}\n"))
    for given, expected in (({"max_epochs": 60, "factor": 3}, 6),
                            ({"max_epochs": 12, "factor": 4}, 3),
                            ({"max_epochs": 2, "factor": 2}, 1),
                            ({"max_epochs": 18, "min_epochs": 6}, 6)):
        options = resolve_options(plain, tmp_path, image_size=64, **given)
        assert options.min_epochs == expected
    # A space's value holds under another --max-epochs where it fits, else the rule.
    assert resolve_options(load_space("quick"), tmp_path, image_size=64,
                           max_epochs=60).min_epochs == 6
    assert resolve_options(load_space("quick"), tmp_path, image_size=64,
                           max_epochs=4, factor=2).min_epochs == 1
    path = _write(tmp_path, f"[hyperparameters]\n{GOOD}\n[search]\nmin_epochs = 2\n")
    assert resolve_options(load_space(path), tmp_path, image_size=64).min_epochs == 2


VARYING = GOOD.replace("depth = { values = [2] }", "depth = { values = [2, 3] }").replace(
    "learning_rate = { values = [0.001] }", "learning_rate = { min = 1e-4, max = 1e-2 }")


def test_a_default_configuration_gives_one_value_per_hyperparameter(tmp_path):
    space = load_space(_write(tmp_path, "[hyperparameters]\n" + VARYING
                              + "\n[default]\ndepth = 3\nlearning_rate = 3e-3\n"))
    # What the space fixes needs no line of its own.
    assert space.default["depth"] == 3 and space.default["learning_rate"] == 3e-3
    assert space.default["decoder"] == "unet" and set(space.default) == set(space.params)
    # keras-tuner's Fixed values win over the space's choices and ranges.
    hp = kt.HyperParameters()
    for name, value in space.default.items():
        hp.Fixed(name, value)
    assert space.register(hp) == space.default
    for name in ("quick", "default"):  # the shipped spaces name one
        assert set(load_space(name).default) == set(load_space(name).params)


@pytest.mark.parametrize("default,needle", [
    ("depth = 3\nwidth = 2", "[default] has unknown hyperparameter 'width'"),
    ("depth = 4\nlearning_rate = 3e-3", "[default] depth = 4 is not one of the space's values"),
    ("depth = 3\nlearning_rate = 0.5", "is outside"),
    ("depth = 3", "[default] gives no value for 'learning_rate'"),
    ('depth = "deep"\nlearning_rate = 3e-3', "is not one of the space's values"),
])
def test_bad_default_configurations_are_refused(tmp_path, default, needle):
    path = _write(tmp_path, "[hyperparameters]\n" + VARYING + "\n[default]\n" + default + "\n")
    with pytest.raises(UserError) as info:
        load_space(path)
    assert needle in str(info.value) and str(path) in str(info.value)
