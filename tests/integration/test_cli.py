"""The `incerta` command: train, evaluate and demo, as a user runs them."""

from __future__ import annotations

import base64
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from ase.io import read
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from typer.testing import CliRunner

from incerta import IncertaCalculator
from incerta.cli.main import app
from incerta.data import default
from incerta.data.io import read_frames
from incerta.evaluate.report import Report
from incerta.models.predict import error_metrics, graphs_for
from incerta.testing import predict
from incerta.train.checkpoint import load_potential

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
EVALUATE_KEYS = {
    "n_structures", "energy_mae_meV", "energy_rmse_meV", "energy_per_atom_mae_meV",
    "energy_per_atom_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A",
}


@dataclass
class DemoRun:
    """The demo's output folder and every figure its reports drew: name -> (figure, caption)."""

    out: Path
    figures: dict[str, tuple[Figure, str]]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo")
    figures = {}
    original = Report.figure

    def record(report, fig, name, caption=""):
        figures[name] = (fig, caption)
        return original(report, fig, name, caption)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Report, "figure", record)
        result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    return DemoRun(out, figures)


def figure_problems(name: str, fig: Figure, caption: str) -> list[str]:
    """What makes a report figure hard to read: a short caption, an unlabelled axis or colour bar,
    a 2-D histogram without colour bar, forces in eV/Å, powers of ten on a log axis, fractional
    ticks on counts, a file name in a legend."""
    problems = [] if len(caption.split()) >= 8 else [f"{name}: the caption should say what to look for"]
    fig.canvas.draw()  # tick labels exist once drawn
    for ax in (a for a in fig.axes if a.axison):
        where = f"{name}, panel '{ax.get_title()}'"
        if getattr(ax, "_colorbar", None) is not None:
            problems += [] if ax.get_ylabel() or ax.get_xlabel() else [f"{where}: unlabelled colour bar"]
            continue
        problems += [] if ax.get_xlabel() and ax.get_ylabel() else [f"{where}: unlabelled axis"]
        problems += [f"{where}: a 2-D histogram without colour bar" for c in ax.collections
                     if isinstance(c, QuadMesh) and c.colorbar is None]
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if "eV/Å" in label.replace("meV/Å", ""):
                problems.append(f"{where}: forces in eV/Å ({label})")
            ticks = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
            if axis.get_scale() == "log" and (not ticks or any("^" in t for t in ticks)):
                problems.append(f"{where}: log ticks {ticks}")
            if label in ("epoch", "iteration", "labels", "structures") and not getattr(
                    axis.get_major_locator(), "_integer", False):
                problems.append(f"{where}: fractional {label} ticks")
        legend = ax.get_legend()
        problems += [f"{where}: file name in legend ({t.get_text()})" for t in (legend.get_texts() if legend else ())
                     if "/" in t.get_text().replace("meV/", "") or ".xyz" in t.get_text()]
    return problems


def test_figure_check_finds_what_makes_a_figure_hard_to_read():
    fig, (histogram, curve) = plt.subplots(1, 2)
    histogram.hist2d(np.random.default_rng(0).random(50), np.random.default_rng(1).random(50))
    histogram.set(xlabel="|ΔF| (eV/Å)", ylabel="σ (meV/Å)", yscale="log")
    curve.plot([0, 1, 2], [30.0, 20.0, 10.0], label="runs/x/test_600K.xyz")
    curve.set(xlabel="iteration")
    curve.legend()
    problems = "\n".join(figure_problems("bad", fig, "A figure."))
    for expected in ("caption", "colour bar", "eV/Å", "log ticks", "unlabelled axis", "fractional iteration",
                     "file name in legend"):
        assert expected in problems, f"{expected!r} not reported in:\n{problems}"


def test_every_demo_figure_is_readable(demo_run):
    figures = demo_run.figures
    assert {"parity", "error_histograms", "learning_curve", "uncertainty_vs_error", "uncertainty_vs_error_by_element",
            "uncertainty_histograms", "uncertainty_histograms_by_element", "calibration", "al_error_vs_labels", "al_strategies",
            "al_uncertainty_over_iterations"} <= set(figures)
    problems = [p for name, (fig, caption) in figures.items() for p in figure_problems(name, fig, caption)]
    assert not problems, "\n".join(problems)


def test_demo_writes_model_and_report(demo_run):
    report = (demo_run.out / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", report)
    assert len(images) >= 6, "training and temperature-shift figures"
    assert "Uncertainty under temperature shift" in report
    assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert (demo_run.out / "figures" / "parity.png").read_bytes().startswith(PNG)
    metrics = json.loads((demo_run.out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"ethanol_xtb_test_300K", "ethanol_xtb_test_600K", "ethanol_xtb_test_1200K"}


def test_demo_model_works_in_ase_and_evaluate(demo_run, tmp_path):
    atoms = read(default.path("test_600K"), index=0)
    atoms.calc = IncertaCalculator(demo_run.out / "model")
    direct = predict(load_potential(demo_run.out / "model"), atoms)
    assert atoms.get_potential_energy() == pytest.approx(direct["energy"], abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), direct["forces"], atol=1e-6)
    assert atoms.calc.get_property("forces_uncertainty", atoms).shape == (len(atoms),)
    out = tmp_path / "errors.json"
    result = runner.invoke(app, ["evaluate", str(demo_run.out / "model"), str(default.path("test_300K")),
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
    model = load_potential(demo_run.out / "model")
    direct = error_metrics(model, graphs_for(model, read_frames(default.path("test_600K"))))
    assert {k: results[str(default.path("test_600K"))][k] for k in direct} == pytest.approx(direct, rel=1e-5)
    row = next(line for line in result.output.splitlines() if "ethanol_xtb_test_600K" in line)
    assert f"{direct['forces_rmse_meV_per_A']:.2f}" in row


#: the demo's costly results: weights and checkpoints, uncertainty fits, cached predictions, labelled frames
WORK_FILES = (".safetensors", ".pt", ".npz", ".xyz")


def test_demo_run_again_reuses_its_finished_work(demo_run):
    """Run again, the demo trains, fits, predicts and labels nothing anew: every model,
    checkpoint, uncertainty fit, cached prediction and labelled frame keeps its bytes and its time
    stamp (a finished run saves its model again, in other bytes: the same weights must not make
    the fits look stale); the reports are written again. Training further from a finished run is
    tested in test_training.py."""
    work = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in demo_run.out.rglob("*")
            if path.suffix in WORK_FILES}
    assert {".npz", ".pt", ".xyz", ".safetensors"} == {path.suffix for path in work}
    result = runner.invoke(app, ["demo", "--out", str(demo_run.out), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    changed = [str(path.relative_to(demo_run.out)) for path, (stamp, data) in work.items()
               if path.stat().st_mtime_ns != stamp or path.read_bytes() != data]
    assert not changed, f"done again: {changed}"
    assert json.loads((demo_run.out / "metrics.json").read_text())["epochs_run"] == 2
    assert (demo_run.out / "report.html").stat().st_mtime_ns > max(stamp for stamp, _ in work.values())


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
    result = runner.invoke(app, ["uq", "fit", str(tmp_path / "no-model"), "--method", "gmm", "--calibration", "bogus"])
    assert result.exit_code == 2 and "calibration: Input should be 'scale', 'power', 'isotonic' or 'conformal'" in result.output


def test_evaluate_names_the_frame_with_an_unknown_element(demo_run, tmp_path):
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = [molecule("CH3CH2OH"), molecule("CH3Cl")]
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=atoms.positions * 0)
    path = tmp_path / "with_chlorine.xyz"
    ase.io.write(path, frames, format="extxyz")
    result = runner.invoke(app, ["evaluate", str(demo_run.out / "model"), str(path)])
    assert result.exit_code == 2
    assert "with_chlorine.xyz, frame 1: element(s) Cl not in the model" in result.output


def test_md_runs_replicas_each_with_its_log_rows_and_trajectory(demo_run, tmp_path):
    start = default.path("test_300K")
    out = tmp_path / "md"
    result = runner.invoke(app, ["md", str(demo_run.out / "model"), str(start), "--replicas", "3", "--steps", "20",
                                 "--check-every", "10", "--trajectory", str(out / "md.xyz"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "replica 2: 20 steps" in result.output
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [(row["replica"], row["step"]) for row in rows] == [(str(k), str(s)) for s in (10, 20) for k in range(3)]
    assert all(float(row["max_force_uncertainty_eV_per_A"]) > 0 for row in rows)
    for replica in range(3):
        frames = read(out / f"md.replica{replica}.xyz", ":")
        assert [frame.info["step"] for frame in frames] == [10, 20] and "forces_uncertainty" in frames[0].arrays
    result = runner.invoke(app, ["md", str(demo_run.out / "model"), str(start), "--replicas", "2", "--thermostat", "bussi",
                                 "--steps", "5", "--out", str(out)])
    assert result.exit_code == 2 and "thermostat 'bussi'" in result.output and "Traceback" not in result.output


def test_low_rank_llpr_fit_says_what_its_rows_lose(demo_run, tmp_path):
    """A rank-k LLPR fit prints how its per-atom uncertainties rank the validation atoms against
    the exact propagation; all H rows rank them exactly like it."""
    import ase.io

    model = tmp_path / "model"
    model.mkdir()
    (model / "potential.safetensors").write_bytes((demo_run.out / "model" / "potential.safetensors").read_bytes())
    for name, count in (("train", 40), ("test_300K", 20)):
        ase.io.write(tmp_path / f"{name}.xyz", read(default.path(name), index=f":{count}"), format="extxyz")
    spearman_printed = {}
    for rank in (1, load_potential(model).spec.readout_hidden):
        result = runner.invoke(app, ["uq", "fit", str(model), "--method", "llpr", "-O", f"rank={rank}",
                                     "--train", str(tmp_path / "train.xyz"), "--val", str(tmp_path / "test_300K.xyz")])
        assert result.exit_code == 0, result.output
        found = re.search(r"Spearman of (-?[0-9.]+)", " ".join(result.output.split()))
        assert found, result.output
        spearman_printed[rank] = float(found.group(1))
    low, full = spearman_printed.values()
    assert full == pytest.approx(1.0) and -1 <= low < 1
