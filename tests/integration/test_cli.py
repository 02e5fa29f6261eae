"""The `incerta` command: train, evaluate and demo, as a user runs them."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from ase.io import read
from typer.testing import CliRunner

from incerta import IncertaCalculator
from incerta.cli.main import app
from incerta.data import default
from incerta.data.io import read_frames
from incerta.models.predict import error_metrics, graphs_for
from incerta.testing import predict
from incerta.train.checkpoint import load_potential

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
EVALUATE_KEYS = {
    "n_structures", "energy_mae_meV", "energy_rmse_meV", "energy_per_atom_mae_meV",
    "energy_per_atom_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A",
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_demo_writes_model_and_report(demo_run):
    report = (demo_run / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report)
    assert len(images) >= 6, "training and temperature-shift figures"
    assert "Uncertainty under temperature shift" in report
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert (demo_run / "figures" / "parity.png").read_bytes().startswith(PNG)
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ethanol_xtb_test_300K", "ethanol_xtb_test_600K", "ethanol_xtb_test_1200K"}


def test_demo_model_works_in_ase_and_evaluate(demo_run, tmp_path):
    atoms = read(default.path("test_600K"), index=0)
    atoms.calc = IncertaCalculator(demo_run / "model")
    direct = predict(load_potential(demo_run / "model"), atoms)
    assert atoms.get_potential_energy() == pytest.approx(direct["energy"], abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), direct["forces"], atol=1e-6)
    assert atoms.calc.results["forces_uncertainty"].shape == (len(atoms),)
    out = tmp_path / "errors.json"
    result = runner.invoke(app, ["evaluate", str(demo_run / "model"), str(default.path("test_300K")),
                                 str(default.path("test_600K")), "--json", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert list(results) == [str(default.path("test_300K")), str(default.path("test_600K"))]
    for values in results.values():
        assert EVALUATE_KEYS <= set(values)
    # calibrated on 300 K validation frames: at 300 K the mean sigma (predicted RMS of the force-error
    # vector) matches the RMS force-vector error, sqrt(3) x the component RMSE, within a factor 1.5
    in_distribution = results[str(default.path("test_300K"))]
    ratio = in_distribution["mean_forces_uncertainty_meV_per_A"] / (np.sqrt(3) * in_distribution["forces_rmse_meV_per_A"])
    assert 1 / 1.5 < ratio < 1.5, ratio
    model = load_potential(demo_run / "model")
    direct = error_metrics(model, graphs_for(model, read_frames(default.path("test_600K"))))
    assert {k: results[str(default.path("test_600K"))][k] for k in direct} == pytest.approx(direct, rel=1e-5)
    row = next(line for line in result.output.splitlines() if "ethanol_xtb_test_600K" in line)
    assert f"{direct['forces_rmse_meV_per_A']:.2f}" in row


def test_demo_resumes_instead_of_restarting(demo_run):
    before = json.loads((demo_run / "metrics.json").read_text())
    result = runner.invoke(app, ["demo", "--out", str(demo_run), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    after = json.loads((demo_run / "metrics.json").read_text())
    assert (before["epochs_run"], after["epochs_run"]) == (2, 3)


def test_train_command_with_override(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data:\n  train: {{path: {default.path('train')}, select: ':30'}}\n  n_val: 10\n"
        "model: {l_max: 1, num_channels: 8, num_layers: 1}\ntraining: {epochs: 5, progress: false}\n"
    )
    result = runner.invoke(app, ["train", str(config), "--run-dir", str(tmp_path / "run"), "--set", "training.epochs=1"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 1
    assert "epochs: 1" in (tmp_path / "run" / "config.yaml").read_text()


def test_user_errors_are_messages_not_tracebacks(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("data: {train: x.xyz}\ntraining: {epocs: 3}\n")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "did you mean 'epochs'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "no-model"), str(default.path("test_300K"))])
    assert result.exit_code == 2 and "no such model" in result.output


def test_evaluate_names_the_frame_with_an_unknown_element(demo_run, tmp_path):
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = [molecule("CH3CH2OH"), molecule("CH3Cl")]
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=atoms.positions * 0)
    path = tmp_path / "with_chlorine.xyz"
    ase.io.write(path, frames, format="extxyz")
    result = runner.invoke(app, ["evaluate", str(demo_run / "model"), str(path)])
    assert result.exit_code == 2
    assert "with_chlorine.xyz, frame 1: element(s) Cl not in the model" in result.output
