"""The shear-order check of stress labels (``incerta data check``): it finds the group whose
labels hold their shear components in other places, and puts them back."""

from __future__ import annotations

from dataclasses import replace

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from typer.testing import CliRunner

from conftest import copper_frames, make_model
from incerta.cli.main import app
from incerta.data.io import read_frames
from incerta.data.validation import DataError
from incerta.evaluate.label_check import (
    checked_frames,
    implausible_scales,
    label_scale,
    model_stress,
    shear_order_check,
)
from incerta.train.checkpoint import save_potential

#: the mislabelling under test: the yz place holds xz, the xz place holds xy, the xy place holds yz
#: (a cycle, so reading the fix backwards would not undo it); the fix reads yz from xy, xz from yz, xy from xz
CYCLED = "xy,yz,xz"


def cycle_shear(stress: np.ndarray) -> np.ndarray:
    """``stress`` (3, 3) written with its shear components cycled as described above (by hand, not
    through the module under test)."""
    written = np.array(stress, dtype=float)
    yz, xz, xy = stress[1, 2], stress[0, 2], stress[0, 1]
    written[1, 2] = written[2, 1] = xz
    written[0, 2] = written[2, 0] = xy
    written[0, 1] = written[1, 0] = yz
    return written


def grouped_copper(count: int, seed: int) -> list:
    """Strained, rattled copper cells with EMT labels, half in group 'bulk' (labels as computed)
    and half in group 'aimd' (shear labels cycled)."""
    frames = copper_frames(count, rattle=0.05, strain=0.04, seed=seed)
    return [replace(f, info={"group": "bulk"}) if k % 2 == 0 else
            replace(f, stress=cycle_shear(f.stress), info={"group": "aimd"}) for k, f in enumerate(frames)]


def test_the_check_finds_the_group_with_cycled_shear_labels_and_restores_them():
    frames = grouped_copper(12, seed=0)
    truth = np.stack([f.stress for f in copper_frames(12, rattle=0.05, strain=0.04, seed=0)])
    # a model that errs like a trained one: the reference stress plus 10 % noise
    predicted = truth * (1 + 0.1 * np.random.default_rng(1).normal(size=truth.shape))
    check = shear_order_check(predicted, frames)
    assert check["bulk"]["chosen"] == "yz,xz,xy" and check["aimd"]["chosen"] == CYCLED
    assert check["aimd"]["structures"] == check["bulk"]["structures"] == 6
    errors = check["aimd"]["rms_error_GPa"]
    assert errors[CYCLED] < 0.2 * errors["yz,xz,xy"], "the cycled labels are far off as read"
    fixed = checked_frames(frames, check)
    np.testing.assert_allclose(np.stack([f.stress for f in fixed]), truth, atol=1e-15)
    assert fixed[0] is frames[0], "a group read in order keeps its frames"


def test_no_order_replaces_the_labels_unless_it_halves_the_error():
    """Labels as noisy as the model: no order stands out, so nothing is reordered."""
    frames = copper_frames(10, rattle=0.05, strain=0.04, seed=2)
    truth = np.stack([f.stress for f in frames])
    noise = np.random.default_rng(3).normal(size=truth.shape) * np.abs(truth).max()
    check = shear_order_check(truth + noise, frames)
    assert check["all"]["chosen"] == "yz,xz,xy", check
    assert check["all"]["structures"] == 10


def test_label_scale_finds_a_flipped_sign_and_kbar_read_as_gpa_whatever_the_pressure_offset():
    """Labels as computed, negated, and ten times too large (kBar read as GPa), against a model
    whose pressure is off by 5 GPa (a model not trained on stress): scales 1, -1 and 0.1."""
    frames = copper_frames(12, rattle=0.05, strain=0.04, seed=6)
    truth = np.stack([f.stress for f in frames])
    factors = {"as computed": 1.0, "negated": -1.0, "kbar": 10.0}
    labelled = [replace(f, stress=factors[name] * f.stress, info={"group": name})
                for f, name in zip(frames, list(factors) * 4)]
    offset = 5.0 * units.GPa * np.eye(3)
    fits = label_scale(truth + offset, labelled)
    assert {g: fit["scale"] for g, fit in fits.items()} == pytest.approx({"as computed": 1.0, "negated": -1.0, "kbar": 0.1})
    assert {g: fit["correlation"] for g, fit in fits.items()} == pytest.approx({"as computed": 1.0, "negated": -1.0, "kbar": 1.0})
    assert implausible_scales(fits) == pytest.approx({"negated": -1.0, "kbar": 0.1})


def test_labels_unrelated_to_the_model_get_a_weak_correlation_and_no_warning(tmp_path):
    """Surface-like labels: noise the model does not follow. The scale is then far from 1 but
    the correlation is weak, so the command does not call it a unit slip."""
    model = make_model(species=(29,), cutoff=3.0)
    save_potential(model, tmp_path / "model")
    frames = copper_frames(8, rattle=0.05, strain=0.04, seed=8)
    rng = np.random.default_rng(9)
    noise = [0.01 * rng.normal(size=(3, 3)) for _ in frames]
    labelled = [replace(f, stress=(n + n.T) / 2) for f, n in zip(frames, noise)]
    fit = label_scale(model_stress(model, frames), labelled)["all"]
    assert abs(fit["correlation"]) < 0.8 and not 0.5 <= fit["scale"] <= 2.0, fit
    assert implausible_scales({"all": fit}) == {}, "too weak a correlation to judge"
    ase.io.write(tmp_path / "cells.xyz", [f.to_atoms() for f in labelled], format="extxyz")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "cells.xyz"), "--model", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert "times" not in result.output


def test_frames_without_stress_are_skipped_and_none_at_all_is_an_error(ethanol):
    from incerta.data.frame import Frame

    frames = copper_frames(4, rattle=0.05, strain=0.04, seed=4)
    molecule = Frame.from_atoms(ethanol, source="ethanol.xyz, frame 0")
    check = shear_order_check(np.zeros((5, 3, 3)), [molecule, *frames])
    assert check["all"]["structures"] == 4
    assert checked_frames([molecule], check)[0] is molecule
    with pytest.raises(DataError, match=r"none of the 1 frames \(first: ethanol.xyz, frame 0\) has a stress label"):
        shear_order_check(np.zeros((1, 3, 3)), [molecule])


def test_data_check_command_reports_and_writes_the_reordered_labels(tmp_path):
    """Labels made by the model itself, one config_type cycled: the command names the group and
    the order, and the frames it writes carry the model's own stress again."""
    model = make_model(species=(29,), cutoff=3.0)
    save_potential(model, tmp_path / "model")
    frames = copper_frames(8, rattle=0.05, strain=0.04, seed=5)
    stress = model_stress(model, frames)
    labelled = [replace(f, stress=cycle_shear(s) if k < 4 else s, info={"config_type": "md" if k < 4 else "elastic"})
                for k, (f, s) in enumerate(zip(frames, stress))]
    ase.io.write(tmp_path / "cells.xyz", [f.to_atoms() for f in labelled], format="extxyz")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "cells.xyz"), "--model", str(tmp_path / "model"),
                                      "--write", str(tmp_path / "fixed.xyz")])
    assert result.exit_code == 0, result.output
    assert "shear labels of md match" in result.output and CYCLED in result.output
    assert "times" not in result.output, "labels and model agree in scale: no scale warning"
    fixed = read_frames(tmp_path / "fixed.xyz")
    np.testing.assert_allclose(np.stack([f.stress for f in fixed]), stress, rtol=1e-6, atol=1e-12)
    assert [f.info["config_type"] for f in fixed] == ["md"] * 4 + ["elastic"] * 4


def test_data_check_command_warns_about_labels_of_the_opposite_sign(tmp_path):
    model = make_model(species=(29,), cutoff=3.0)
    save_potential(model, tmp_path / "model")
    frames = copper_frames(6, rattle=0.05, strain=0.04, seed=7)
    stress = model_stress(model, frames)
    ase.io.write(tmp_path / "cells.xyz", [replace(f, stress=-s).to_atoms() for f, s in zip(frames, stress)], format="extxyz")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "cells.xyz"), "--model", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    assert "match the model only times -1" in result.output and "opposite sign convention" in result.output


def test_data_check_command_names_a_file_without_stress(tmp_path):
    model = make_model(species=(1, 6, 8))
    save_potential(model, tmp_path / "model")
    from incerta.data import default

    result = CliRunner().invoke(app, ["data", "check", str(default.path("test_300K")), "--model", str(tmp_path / "model")])
    assert result.exit_code == 2
    assert "has a stress label" in result.output and "ethanol_xtb_test_300K" in result.output


def sheared_copper(count: int) -> list:
    """Copper cells sheared in xy and stretched, not rattled: a mirror plane normal to z fixes
    their yz and xz stress at zero, EMT gives xy nonzero."""
    from incerta.data.frame import Frame
    from incerta.data.oracles import EMTOracle

    frames = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        deformation = np.diag([1.0 + 0.01 * k, 1.0, 1.0 - 0.005 * k])
        deformation[0, 1] = 0.02 + 0.005 * k
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
        frames.append(EMTOracle().label(Frame.from_atoms(atoms, source=f"sheared {k}")))
    return frames


def test_symmetry_alone_puts_shear_labels_back_where_the_cells_allow_them():
    """Labels written with xy in the yz place: a probe that knows nothing (zero stress) cannot
    tell, but each cell's mirror plane fixes yz at zero, so the labels as read break the
    symmetry of every cell, and the order chosen puts them back."""
    truth = sheared_copper(6)
    assert all(abs(f.stress[0, 1]) > 1e-3 for f in truth), "the test needs a nonzero xy stress"
    swapped = []
    for frame in truth:
        written = np.array(frame.stress)
        written[1, 2], written[0, 1] = frame.stress[0, 1], frame.stress[1, 2]
        written[2, 1], written[1, 0] = written[1, 2], written[0, 1]
        swapped.append(replace(frame, stress=written))
    check = shear_order_check(np.zeros((6, 3, 3)), swapped)["all"]
    assert check["symmetric_cells"] == 6 and check["symmetry_violations"]["yz,xz,xy"] == 6
    assert check["chosen"] != "yz,xz,xy" and check["symmetry_violations"][check["chosen"]] == 0
    fixed = checked_frames(swapped, {"all": check})
    np.testing.assert_allclose(np.stack([f.stress for f in fixed]), np.stack([f.stress for f in truth]), atol=1e-15)
    as_computed = shear_order_check(np.zeros((6, 3, 3)), truth)["all"]
    assert as_computed["chosen"] == "yz,xz,xy" and as_computed["symmetry_violations"]["yz,xz,xy"] == 0
