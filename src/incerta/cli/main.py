"""The ``incerta`` command: train, evaluate, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from incerta.config import ConfigError
from incerta.data.validation import DataError
from incerta.models.potential import UnknownSpeciesError
from incerta.train.checkpoint import CheckpointError

app = typer.Typer(
    help="Equivariant interatomic potentials with calibrated uncertainty.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
USER_ERRORS = (ConfigError, DataError, CheckpointError, UnknownSpeciesError)


def fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run configuration (see configs/example.yaml)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", "-o", help="Output folder (default runs/<config name>)."),
    overrides: List[str] = typer.Option([], "--set", "-s", help="Override a config value, e.g. --set training.lr=0.01"),
    resume: bool = typer.Option(True, help="Resume the run found in --run-dir, if any."),
    ensemble: int = typer.Option(1, "--ensemble", min=1, help="Train a deep ensemble of this many members."),
    workers: Optional[int] = typer.Option(None, help="Ensemble members trained at once (default: one per core)."),
) -> None:
    """Train a potential (or a deep ensemble); the model lands in RUN_DIR/model."""
    from incerta.config import load_config
    from incerta.train.ensemble import train_ensemble
    from incerta.train.run import train_run

    try:
        cfg = load_config(config, overrides)
        target = run_dir or Path("runs") / config.stem
        if ensemble > 1:
            report = train_ensemble(cfg, target, ensemble, workers)
            console.print(f"deep ensemble of {report['fit']['members']} members calibrated on {report['n_validation']} "
                          f"validation structures: {target / 'model'}")
            return
        metrics = train_run(cfg, target, resume=resume)
    except USER_ERRORS as err:
        fail(err)
    print_metrics({"validation": metrics["validation"], **metrics["test"]})
    console.print(f"model written to {target / 'model'}")


def print_metrics(results: dict[str, dict[str, float]]) -> None:
    """One row per data set: errors in meV, meV/atom and meV/Å."""
    table = Table(title="errors (energy MAE/RMSE in meV and meV/atom, forces in meV/Å)")
    columns = [("n", "n_structures", "{:.0f}"), ("E MAE", "energy_mae_meV", "{:.2f}"),
               ("E RMSE", "energy_rmse_meV", "{:.2f}"), ("E/atom MAE", "energy_per_atom_mae_meV", "{:.3f}"),
               ("E/atom RMSE", "energy_per_atom_rmse_meV", "{:.3f}"), ("F MAE", "forces_mae_meV_per_A", "{:.2f}"),
               ("F RMSE", "forces_rmse_meV_per_A", "{:.2f}")]
    table.add_column("data", overflow="fold")
    for title, _, _ in columns:
        table.add_column(title, justify="right", no_wrap=True, min_width=len(title))
    for name, metrics in results.items():
        table.add_row(Path(name).name, *[fmt.format(metrics[key]) for _, key, fmt in columns])
    Console(width=max(Console().width, 120)).print(table)


def print_uncertainty_metrics(results: dict[str, dict[str, float]]) -> None:
    """Uncertainty quality per data set (rank correlation and calibration)."""
    table = Table(title="uncertainty (Spearman of sigma vs error; miscalibration area: 0 = calibrated)")
    columns = [("rho F atoms", "spearman_forces_atoms"), ("rho structures", "spearman_structures"),
               ("rho E", "spearman_energy"), ("miscal F", "miscalibration_area_forces"),
               ("miscal E", "miscalibration_area_energy"), ("mean sigma_F meV/Å", "mean_forces_uncertainty_meV_per_A")]
    table.add_column("data", overflow="fold")
    for title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True)
    for name, metrics in results.items():
        table.add_row(Path(name).name, *[f"{metrics[key]:.3f}" for _, key in columns])
    Console(width=max(Console().width, 120)).print(table)


@app.command()
def evaluate(
    model: Path = typer.Argument(..., help="Model folder, run folder or .safetensors file."),
    data: List[Path] = typer.Argument(..., help="Labelled structure files (extxyz, npz, n2p2, ...)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    batch_size: int = typer.Option(16, help="Structures per forward pass."),
) -> None:
    """Energy and force errors of MODEL on each DATA file."""
    from incerta.data.io import read_frames
    from incerta.evaluate.predict import error_metrics, graphs_for
    from incerta.train.checkpoint import load_potential
    from incerta.uq.evaluation import uncertain_error_metrics
    from incerta.uq.store import has_uncertainty, load_uncertain_potential
    from incerta.utils.files import atomic_write_text

    try:
        potential = load_potential(model)
        uncertain = load_uncertain_potential(model) if has_uncertainty(model) else None
        results = {}
        for path in data:
            frames = read_frames(path, require=("energy",))
            graphs = graphs_for(potential, frames)
            if uncertain is None:
                results[str(path)] = error_metrics(potential, graphs, batch_size)
            else:
                results[str(path)] = uncertain_error_metrics(uncertain, graphs, batch_size)
    except USER_ERRORS as err:
        fail(err)
    print_metrics(results)
    if uncertain is not None:
        print_uncertainty_metrics(results)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(results, indent=2))


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Output folder."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: the demo's setting)."),
) -> None:
    """Train on the embedded GFN2-xTB ethanol data and write OUT/report.html and OUT/model."""
    from incerta.demo import run_demo

    try:
        metrics = run_demo(out, epochs)
    except USER_ERRORS as err:
        fail(err)
    print_metrics({"validation": metrics["validation"], **metrics["test"]})
    console.print(f"model: {out / 'model'}   report: {out / 'report.html'}")


uq_app = typer.Typer(help="Attach and inspect uncertainty estimates.", no_args_is_help=True)
app.add_typer(uq_app, name="uq")


@uq_app.command("fit")
def uq_fit(
    model: Path = typer.Argument(..., help="Model folder (e.g. RUN_DIR/model) to attach the method to."),
    method: str = typer.Option(..., "--method", "-m", help="gmm, llpr, svgp, lnk, ledl or shallow."),
    train: List[Path] = typer.Option([], "--train", help="Training data (default: the model's run split)."),
    val: List[Path] = typer.Option([], "--val", help="Validation data for calibration (default: the run split)."),
    epochs: int = typer.Option(30, help="Epochs for methods that train (ledl, shallow, svgp, lnk)."),
    lr: float = typer.Option(0.002, help="Learning rate for methods that train."),
    calibration: Optional[str] = typer.Option(None, help="scale, power or isotonic (default: by score type)."),
    options: List[str] = typer.Option([], "--option", "-O", help="Method option, e.g. -O heads=4"),
    seed: int = typer.Option(0),
) -> None:
    """Fit METHOD on the training data, calibrate it on validation data, save it with MODEL."""
    import yaml

    from incerta.data.io import read_frames
    from incerta.uq.base import FitSettings
    from incerta.uq.fit import fit_uncertainty, run_splits

    try:
        if calibration not in (None, "scale", "power", "isotonic"):
            raise ConfigError(f"--calibration: expected scale, power or isotonic, got '{calibration}'")
        parsed = {}
        for text in options:
            if "=" not in text:
                raise ConfigError(f"--option '{text}' must look like name=value")
            key, value = text.split("=", 1)
            parsed[key] = yaml.safe_load(value)
        if train and val:
            train_frames = [f for p in train for f in read_frames(p, require=("energy", "forces"))]
            val_frames = [f for p in val for f in read_frames(p, require=("energy", "forces"))]
        else:
            splits = run_splits(model)
            train_frames = [f for p in train for f in read_frames(p, require=("energy", "forces"))] or splits.train
            val_frames = [f for p in val for f in read_frames(p, require=("energy", "forces"))] or splits.validation
        report = fit_uncertainty(model, method, train_frames, val_frames, parsed,
                                 FitSettings(epochs=epochs, lr=lr, seed=seed), calibration)
    except USER_ERRORS as err:
        fail(err)
    except TypeError as err:
        fail(ConfigError(f"method '{method}' does not take these options: {err}"))
    console.print(f"{method}: fitted in {report['fit_time_s']:.1f} s on {report['n_train']} structures, "
                  f"calibrated ({report['calibration']}) on {report['n_validation']}; saved in {model}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
