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
) -> None:
    """Train a potential; the exported model lands in RUN_DIR/model."""
    from incerta.config import load_config
    from incerta.train.run import train_run

    try:
        cfg = load_config(config, overrides)
        target = run_dir or Path("runs") / config.stem
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
    from incerta.utils.files import atomic_write_text

    try:
        potential = load_potential(model)
        results = {}
        for path in data:
            frames = read_frames(path, require=("energy",))
            results[str(path)] = error_metrics(potential, graphs_for(potential, frames), batch_size)
    except USER_ERRORS as err:
        fail(err)
    print_metrics(results)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
