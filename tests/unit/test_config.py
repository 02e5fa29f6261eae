"""Configuration parsing, overrides and the messages of wrong keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from incerta.config import ConfigError, load_config


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_minimal_config_defaults_follow_the_report(tmp_path):
    config = load_config(write(tmp_path, "data:\n  train: train.xyz\n"))
    t = config.training
    assert (t.lr, t.batch_size, t.scheduler_patience, t.scheduler_factor, t.forces_weight) == (0.005, 5, 100, 0.5, 0.99)
    assert config.data.train[0].path == (tmp_path / "train.xyz").resolve(), "paths are relative to the config file"


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "data:\n  train: t.xyz\ntraining:\n  learning_rat: 0.1\n  epochz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "training.epochz: unknown key; did you mean 'epochs'?" in message
    assert "training.learning_rat: unknown key" in message


def test_unknown_key_in_nested_data_source(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train.0.formt: unknown key; did you mean 'format'\?"):
        load_config(write(tmp_path, "data:\n  train: [{path: t.xyz, formt: extxyz}]\n"))


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(ConfigError, match=r"model.l_max: Input should be less than or equal to 3 \(got 5\)"):
        load_config(write(tmp_path, "data: {train: t.xyz}\nmodel: {l_max: 5}\n"))
    with pytest.raises(ConfigError, match=r"training.epochs: Input should be a valid integer.*\(got 'ten'\)"):
        load_config(write(tmp_path, "data: {train: t.xyz}\ntraining: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match=r"data.train.0.energy_unit: Value error, expected one of"):
        load_config(write(tmp_path, "data: {train: {path: t.xyz, energy_unit: kcal}}\n"))
    with pytest.raises(ConfigError, match=r"training.device: Value error, 'gpu' is not a device: use auto, cpu, cuda"):
        load_config(write(tmp_path, "data: {train: t.xyz}\ntraining: {device: gpu}\n"))


def test_missing_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"data: Field required"):
        load_config(write(tmp_path, "model: {l_max: 1}\n"))
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_config(write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match=r"cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_command_line_overrides(tmp_path):
    config = load_config(write(tmp_path, "data: {train: t.xyz}\n"), ["training.lr=0.02", "model.radial_hidden=[8, 8]"])
    assert config.training.lr == 0.02
    assert config.model.radial_hidden == [8, 8]
    with pytest.raises(ConfigError, match=r"training.lrr: unknown key; did you mean 'lr'"):
        load_config(write(tmp_path, "data: {train: t.xyz}\n"), ["training.lrr=1"])
    with pytest.raises(ConfigError, match=r"must look like key.path=value"):
        load_config(write(tmp_path, "data: {train: t.xyz}\n"), ["training.lr"])


def test_frame_selection_is_validated(tmp_path):
    config = load_config(write(tmp_path, "data: {train: {path: t.xyz, select: '10:20'}}\n"))
    assert config.data.train[0].select == "10:20"
    with pytest.raises(ConfigError, match=r"not a slice"):
        load_config(write(tmp_path, "data: {train: {path: t.xyz, select: 'first ten'}}\n"))


def test_md_settings_policy_and_old_name():
    from incerta.config.active import MDSection
    from incerta.config.md import MDSettings

    assert MDSettings().on_flag == "stop" and MDSection().on_flag == "rewind", "a user's run stops; AL explores"
    assert MDSection.model_validate({"on_threshold": "branch"}).on_flag == "rewind"
    assert MDSection.model_validate({"on_threshold": "stop"}).on_flag == "stop"
    with pytest.raises(ValidationError, match="ensemble"):
        MDSettings.model_validate({"ensemble": "nph"})


def test_md_exploration_that_would_rewind_to_its_start_forever_is_refused():
    """Rewinding MD under a zero threshold flags every check and never leaves its start: refused,
    naming the settings that fix it; any of them (or a pool) is accepted."""
    from incerta.config.active import ActiveSection

    md = {"source": "md", "md": {"on_flag": "rewind"}}
    with pytest.raises(ValidationError, match=r"every run would go back to its start.*threshold_factor"):
        ActiveSection.model_validate({"candidates": md})
    for fix in ({"selection": {"threshold_factor": 1.5}}, {"selection": {"threshold": 0.1}},
                {"candidates": {**md, "md": {"on_flag": "continue"}}}, {"candidates": {"source": "pool"}}):
        ActiveSection.model_validate({"candidates": md, **fix})


def test_shift_variants_resolve_their_calibration_data_and_keep_distinct_names(tmp_path):
    from incerta.config import ShiftConfig, load_experiment

    base = ("data: {train: t.xyz}\nshift:\n  groups: {cold: a.xyz, hot: b.xyz}\n  methods: [gmm]\n  variants:\n"
            "    NAME: {method: lnk, fit: {calibration_data: [{path: hot.xyz, select: '::5'}]}}\n")
    config = load_experiment(write(tmp_path, base.replace("NAME", "lnk-hot")), ShiftConfig)
    source = config.shift.variants["lnk-hot"].fit.calibration_data[0]
    assert source.path == (tmp_path / "hot.xyz").resolve() and source.select == "::5"
    with pytest.raises(ConfigError, match=r"variants \['gmm'\] have the names of methods"):
        load_experiment(write(tmp_path, base.replace("NAME", "gmm")), ShiftConfig)
