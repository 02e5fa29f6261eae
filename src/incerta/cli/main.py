"""The ``incerta`` command: train, evaluate, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError, explain
from incerta.config.uncertainty import FitSection
from incerta.data.validation import DataError
from incerta.models.potential import UnknownSpeciesError
from incerta.utils.distributed import DeviceError
from incerta.utils.tensor_files import CheckpointError

if TYPE_CHECKING:
    from incerta.calculators.md import WatchedMD

app = typer.Typer(
    help="Equivariant interatomic potentials with calibrated uncertainty.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
USER_ERRORS = (ConfigError, DataError, CheckpointError, UnknownSpeciesError, DeviceError)


def fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML run configuration (see configs/example.yaml)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", "-o", help="Output folder (default runs/<config name>)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value, e.g. --set training.lr=0.01"),
    resume: bool = typer.Option(True, help="Resume the run found in --run-dir, if any."),
    ensemble: int = typer.Option(1, "--ensemble", min=1, help="Train a deep ensemble of this many members."),
    workers: int | None = typer.Option(None, help="Ensemble members trained at once (default: one per core)."),
    nprocs: int = typer.Option(1, "--nprocs", min=1, help="Data-parallel processes on this machine (gloo/NCCL)."),
    scheduler: str | None = typer.Option(None, help="Dask scheduler address for ensemble members."),
) -> None:
    """Train a potential (or a deep ensemble); the model lands in RUN_DIR/model."""
    from incerta.config.loading import load_config
    from incerta.evaluate.training_report import write_training_report
    from incerta.train.run import train_run, train_run_parallel
    from incerta.uq.ensemble_training import train_ensemble
    from incerta.utils.distributed import init_from_environment, is_main

    try:
        cfg = load_config(config, overrides)
        target = run_dir or Path("runs") / config.stem
        if ensemble > 1:
            report = train_ensemble(cfg, target, ensemble, workers, scheduler)
            console.print(f"deep ensemble of {report['fit']['members']} members calibrated on {report['n_validation']} "
                          f"validation structures: {target / 'model'}")
            return
        if nprocs > 1:
            run = train_run_parallel(cfg, target, nprocs, resume)
        else:
            init_from_environment(cfg.training.device)  # joins the process group of torchrun / srun, if any
            run = train_run(cfg, target, resume=resume)
        if not is_main():
            return
        write_training_report(run)
    except USER_ERRORS as err:
        fail(err)
    metrics = run.metrics
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
    data: list[Path] = typer.Argument(..., help="Labelled structure files (extxyz, npz, n2p2, ...)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    batch_size: int = typer.Option(16, help="Structures per forward pass."),
) -> None:
    """Energy and force errors of MODEL on each DATA file."""
    from incerta.data.io import read_frames
    from incerta.models.predict import error_metrics, graphs_for
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
    epochs: int | None = typer.Option(None, help="Training epochs of the model; the active-learning models train "
                                      "for at most as many (default: the demo's settings)."),
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
    method: str = typer.Option(..., "--method", "-m", help="gmm, llpr, svgp, lnk, ledl, shallow or combined."),
    train: list[Path] = typer.Option([], "--train", help="Training data (default: the model's run split)."),
    val: list[Path] = typer.Option([], "--val", help="Validation data for calibration (default: the run split)."),
    epochs: int = typer.Option(FitSection().epochs, help="Epochs for methods that train (ledl, shallow, svgp, lnk)."),
    lr: float = typer.Option(FitSection().lr, help="Learning rate for methods that train."),
    calibration: str | None = typer.Option(None, help="scale, power, isotonic or conformal (90 % intervals hold on data like the validation set; default: by score type)."),
    calibrate_with: list[Path] = typer.Option(
        [], "--calibrate-with", help="Labelled frames calibrated on besides the validation data, e.g. a few "
        "reference-labelled frames of a short MD run hotter than the training data (anticipates the shift)."),
    options: list[str] = typer.Option([], "--option", "-O", help="Method option, e.g. -O heads=4"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N: where the fit runs (the saved method runs anywhere)."),
) -> None:
    """Fit METHOD on the training data, calibrate it on validation data, save it with MODEL."""
    import yaml

    from incerta.data.io import read_frames
    from incerta.uq.base import FitSettings
    from incerta.uq.fit import fit_uncertainty, run_splits

    try:
        settings = FitSettings(epochs=epochs, lr=lr, seed=seed, calibration=calibration, device=device,
                               calibration_data=[{"path": path} for path in calibrate_with])
        parsed = {}
        for text in options:
            if "=" not in text:
                raise ConfigError(f"--option '{text}' must look like name=value")
            key, value = text.split("=", 1)
            parsed[key] = yaml.safe_load(value)
        train_frames, val_frames = ([f for p in paths for f in read_frames(p, require=("energy", "forces"))]
                                    for paths in (train, val))
        if not (train_frames and val_frames):
            splits = run_splits(model)
            train_frames, val_frames = train_frames or splits.train, val_frames or splits.validation
        report = fit_uncertainty(model, method, train_frames, val_frames, parsed, settings)
    except USER_ERRORS as err:
        fail(err)
    except ValidationError as err:
        fail(explain(err, FitSettings, "incerta uq fit"))
    except TypeError as err:
        fail(ConfigError(f"method '{method}' does not take these options: {err}"))
    console.print(f"{method}: fitted in {report['fit_time_s']:.1f} s on {report['n_train']} structures, "
                  f"calibrated ({report['calibration']}) on {report['n_validation']}; saved in {model}")
    if "validation_spearman_vs_exact" in report["fit"]:  # a low-rank or sampled LLPR: what it loses
        console.print(f"per-atom force uncertainties rank the validation atoms like the exact propagation with a "
                      f"Spearman of {report['fit']['validation_spearman_vs_exact']:.3f} (more rows: -O rank=K)")


@uq_app.command("shift")
def uq_shift(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/uq_shift_acac.yaml)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/<config name>)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value."),
) -> None:
    """Uncertainty under distribution shift: train, attach methods, compare test groups."""
    from incerta.config.experiments import ShiftConfig
    from incerta.config.loading import load_experiment
    from incerta.evaluate.shift import per_group_rows, run_shift, table_rows

    try:
        cfg = load_experiment(config, ShiftConfig, overrides)
        target = out or Path("runs") / config.stem
        results = run_shift(cfg, target).results
    except USER_ERRORS as err:
        fail(err)
    header, rows = table_rows(results)
    print_rows("uncertainty under shift", header, rows)
    print_rows("per group", *per_group_rows(results))
    console.print(f"report: {target / 'report.html'}   results: {target / 'results.json'}")


@uq_app.command("ood")
def uq_ood(
    config: Path = typer.Argument(..., help="Experiment YAML (see configs/uq_ood_rmd17.yaml)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default runs/<config name>)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value."),
) -> None:
    """Out-of-distribution detection: one model per dataset, tested on every dataset."""
    from incerta.config.experiments import OODConfig
    from incerta.config.loading import load_experiment
    from incerta.evaluate.ood import run_ood

    try:
        cfg = load_experiment(config, OODConfig, overrides)
        target = out or Path("runs") / config.stem
        results = run_ood(cfg, target)
    except USER_ERRORS as err:
        fail(err)
    names = results["datasets"]
    for method, result in results["methods"].items():
        print_rows(f"AUROC {method} (rows: trained on; columns: tested on)", ["trained on", *names],
                   [[n, *row] for n, row in zip(names, result["auroc"])])
    for train_name, test_name, unseen in results["element_flagged"]:
        console.print(f"{train_name} model on {test_name}: {', '.join(unseen)} never seen in training; flagged, not predicted")
    console.print(f"report: {target / 'report.html'}   results: {target / 'results.json'}")


al_app = typer.Typer(help="Active learning: label only what the model is unsure about.", no_args_is_help=True)
app.add_typer(al_app, name="al")


@al_app.command("run")
def al_run(
    config: Path | None = typer.Argument(None, help="Active-learning YAML (see configs/al_acac_xtb.yaml)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default runs/<config name>)."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this folder."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a config value."),
) -> None:
    """Select uncertain structures, label them with the oracle, retrain, repeat."""
    from incerta.active.loop import ActiveLearning
    from incerta.active.report import learning_rows
    from incerta.config.active import ALConfig
    from incerta.config.loading import load_experiment

    try:
        if resume is not None:
            if config is not None:
                raise ConfigError("give either CONFIG or --resume DIR, not both")
            target, cfg = resume, load_experiment(resume / "config.yaml", ALConfig, overrides)
        elif config is not None:
            target = out or Path("runs") / config.stem
            cfg = load_experiment(config, ALConfig, overrides)
            if (target / "journal.jsonl").exists():
                raise ConfigError(f"{target} already holds an active-learning run; use --resume {target}")
        else:
            raise ConfigError("give a CONFIG file or --resume DIR")
        loop = ActiveLearning(cfg, target)
        reason = loop.run()
    except USER_ERRORS as err:
        fail(err)
    rows = learning_rows(loop.state)
    keys = [k for k in rows[0] if k.endswith("(meV/Å)")] if rows else []
    print_rows("learning curve", ["iteration", "labels", *keys], [[r["iteration"], r["n_labels"], *[r[k] for k in keys]] for r in rows])
    console.print(f"stopped: {reason}; labels in {target / 'labelled.xyz'}; report {target / 'report.html'}")


@app.command()
def md(
    model: Path = typer.Argument(..., help="Model folder (with an uncertainty attached for watching)."),
    structure: Path = typer.Argument(..., help="Starting structure (any ASE-readable file; last frame used)."),
    ensemble: str = typer.Option(MDSettings().ensemble, help="nve (velocity Verlet), nvt or npt (MTK barostat, periodic cells)."),
    temperature: float = typer.Option(MDSettings().temperature_K, "--temperature", "-T", help="Target and initial temperature (K)."),
    steps: int = typer.Option(MDSettings().steps, help="Integrator steps, exactly."),
    timestep: float = typer.Option(MDSettings().timestep_fs, help="Time step (fs)."),
    thermostat: str = typer.Option(MDSettings().thermostat, help="nvt: langevin or bussi."),
    friction: float = typer.Option(MDSettings().friction_per_fs, help="Langevin friction (1/fs)."),
    pressure: float = typer.Option(MDSettings().pressure_GPa, help="npt target pressure (GPa)."),
    cell: str = typer.Option(MDSettings().cell, help="npt: isotropic (volume only) or full (every cell vector)."),
    max_uncertainty: float | None = typer.Option(None, help="Flag frames whose largest atomic force uncertainty passes this (eV/Å)."),
    on_flag: str = typer.Option(MDSettings().on_flag, help="At a flagged frame: stop, continue, or rewind to the last safe frame."),
    check_every: int = typer.Option(MDSettings().check_every, help="Steps between uncertainty checks and log rows."),
    trajectory: Path | None = typer.Option(None, help="Trajectory file (.xyz extended XYZ or .traj), with per-atom uncertainty."),
    write_every: int = typer.Option(MDSettings().write_every, help="Steps between trajectory frames."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    replicas: int = typer.Option(1, min=1, help="Copies of the structure run together in one TorchSim batch (NVE or "
                                 "Langevin NVT), each with its own velocities and its own uncertainty watch."),
    out: Path = typer.Option(Path("md-output"), "--out", "-o", help="Folder for log.csv and flagged.xyz."),
    seed: int = typer.Option(0),
) -> None:
    """Uncertainty-aware MD (NVE, NVT, NPT): logs energies, temperature, pressure, volume and the
    largest and mean atomic force uncertainty, writes the trajectory, and saves flagged frames
    (flagged.xyz) for labelling. With --replicas N the log has a replica column, each replica
    its own trajectory (NAME.replicaK.xyz) and flagged frames their replica in info."""
    import ase.io

    from incerta.calculators.ase import IncertaCalculator
    from incerta.calculators.md import run_watched_md
    from incerta.utils.files import atomic_write

    try:
        try:
            settings = MDSettings(ensemble=ensemble, temperature_K=temperature, steps=steps, timestep_fs=timestep,
                                  thermostat=thermostat, friction_per_fs=friction, pressure_GPa=pressure, cell=cell,
                                  check_every=check_every, write_every=write_every, on_flag=on_flag)
        except ValidationError as err:
            raise ConfigError(explain(err, MDSettings, "incerta md")) from None
        calculator = IncertaCalculator(model, device=device)
        atoms = ase.io.read(structure, index=-1)
        out.mkdir(parents=True, exist_ok=True)
        if replicas > 1:
            try:
                from incerta.calculators.replicas import run_replica_md
            except ImportError as err:
                raise ConfigError(str(err)) from None
            results = run_replica_md([atoms] * replicas, calculator.model, settings, max_uncertainty,
                                     log=out / "log.csv", trajectory=trajectory, seed=seed, device=device)
        else:
            results = [run_watched_md(atoms, calculator, settings, max_uncertainty, log=out / "log.csv",
                                      trajectory=trajectory, seed=seed)]
        flagged = [frame for result in results for frame in result.flagged]
        if flagged:
            atomic_write(out / "flagged.xyz", lambda path: ase.io.write(path, flagged, format="extxyz"))
    except USER_ERRORS as err:
        fail(err)
    for index, result in enumerate(results):
        _report_md(result, f"replica {index}: " if replicas > 1 else "")
    console.print(f"{len(flagged)} flagged frames" + (f" in {out / 'flagged.xyz'}" if flagged else "")
                  + f"; log {out / 'log.csv'}" + (f"; trajectory {trajectory}" if trajectory and replicas == 1 else "")
                  + (f"; trajectories {trajectory.stem}.replicaK{trajectory.suffix}" if trajectory and replicas > 1 else ""))


def _report_md(result: WatchedMD, name: str) -> None:
    """One line per MD run: steps, stop, final temperature, flags; an early end in yellow."""
    if result.error:
        console.print(f"[bold yellow]{escape(name)}MD stopped early[/] {escape(result.error)}", highlight=False)
    last = next((row for row in reversed(result.log) if not str(row["event"]).startswith("stopped:")), result.log[-1])
    console.print(f"{name}{result.steps_done} steps" + (f", stopped on a flag at step {result.stopped_at}" if result.stopped_at else "")
                  + f"; final T {last['temperature_K']:.0f} K; {len(result.flagged)} flagged frames", highlight=False)


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model folder (its attached uncertainty is exported too)."),
    out: Path = typer.Option(Path("model.pt"), "--out", "-o", help="The metatomic model file to write."),
    uncertainty: bool = typer.Option(True, help="Export the attached uncertainty method (gmm or llpr)."),
    dtype: str = typer.Option("float32", help="float32 or float64: the precision the engine runs the model in."),
) -> None:
    """Write a metatomic model file for MD engines (LAMMPS pair_style metatomic, i-PI, ASE,
    TorchSim): energy, forces and stress by the engine's autograd, energy_uncertainty and
    incerta::forces_uncertainty (eV/Å per atom)."""
    from incerta.calculators.metatomic import ExportError, export_model

    if dtype not in ("float32", "float64"):
        fail(ConfigError(f"--dtype must be float32 or float64, not '{dtype}'"))
    try:
        path = export_model(model, out, uncertainty=uncertainty, dtype=dtype)
    except (*USER_ERRORS, ExportError) as err:
        fail(err)
    console.print(f"wrote {path}", highlight=False)


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., help="Model folder (or run folder)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Package to write (default: in the model folder, where "
                                    "the calculator, `incerta md` and active learning find it)."),
    device: str = typer.Option("cpu", help="cpu or cuda: the device the package runs on."),
    stress: bool | None = typer.Option(None, "--stress/--no-stress", help="Also give the stress of periodic cells "
                                       "(default: if the model was trained on periodic data)."),
    parallel_kernels: bool = typer.Option(False, "--parallel-kernels", help="OpenMP-parallel CPU kernels: for "
                                          "large cells on many cores (on small structures serial kernels are "
                                          "faster; benchmarks/compiled_kernels.py measures both)."),
) -> None:
    """Compile the model's energy, forces (and stress) ahead of time with AOTInductor, for any
    number of atoms: the same numbers as the eager model, several times faster on small
    structures. A model that cannot be compiled runs eagerly, with a warning."""
    from incerta.calculators.compiling import compile_model
    from incerta.models.compiled import CompileError

    try:
        path = compile_model(model, out, device, stress, parallel_kernels)
    except USER_ERRORS as err:
        fail(err)
    except CompileError as err:
        console.print(f"[bold yellow]warning:[/] {escape(str(err))}; the model runs eagerly", highlight=False,
                      soft_wrap=True)
        return
    console.print(f"wrote {path}", highlight=False)


data_app = typer.Typer(help="Make and inspect data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("generate")
def data_generate(
    system: str = typer.Argument(..., help="ag3 (Ag3+/Ag3-), c10h2 (C10H2/C10H3+) or nacl (Na8Cl8/Na9Cl8+)."),
    out: Path = typer.Option(..., "--out", "-o", help="Extended XYZ file to write."),
    frames: int = typer.Option(100, help="MD frames per structure (each labelled in every charge state)."),
    temperature: float = typer.Option(1000.0, help="MD temperature (K) for sampling geometries."),
    oracle: str = typer.Option("tblite", help="tblite (GFN2-xTB) or pyscf (PBE/def2-SVP)."),
    seed: int = typer.Option(0),
) -> None:
    """Sample geometries by MD and label them with a reference calculator, in each charge state."""
    import sys

    import ase.io

    from incerta.data.generate import SYSTEMS, generate
    from incerta.utils.files import atomic_write

    if system not in SYSTEMS:
        fail(ConfigError(f"unknown system '{system}'; choose one of {', '.join(SYSTEMS)}"))
    if oracle not in ("tblite", "pyscf"):
        fail(ConfigError(f"--oracle: expected tblite or pyscf, got '{oracle}'"))
    made = generate(system, frames, temperature, oracle, seed, command=" ".join(["incerta", *sys.argv[1:]]))
    atomic_write(out, lambda tmp: ase.io.write(tmp, [f.to_atoms() for f in made], format="extxyz"))
    console.print(f"{len(made)} labelled structures written to {out}")


@data_app.command("convert")
def data_convert(
    inputs: list[Path] = typer.Argument(..., help="Labelled files in any supported format."),
    out: Path = typer.Option(..., "--out", "-o", help="The on-disk store to write (.h5)."),
    cutoff: float = typer.Option(5.0, help="Neighbour-list cutoff (Å); must equal the model's cutoff."),
) -> None:
    """Preprocess data into an HDF5 store with neighbour lists, read lazily during training."""
    from incerta.data.io import read_frames
    from incerta.data.store import write_store

    try:
        frames = (f for path in inputs for f in read_frames(path, require=("energy", "forces")))
        count = write_store(out, frames, cutoff)
    except USER_ERRORS as err:
        fail(err)
    console.print(f"{count} structures written to {out} (cutoff {cutoff} Å)")


@data_app.command("check")
def data_check(
    data: Path = typer.Argument(..., help="Labelled periodic structures with stress, in any supported format."),
    model: Path = typer.Option(..., "--model", "-m", help="A trained model folder; best trained on energies and "
                               "forces alone, so its stress owes nothing to the labels under test."),
    fmt: str = typer.Option("auto", "--format", help="The file format (auto: from the name)."),
    group_by: str | None = typer.Option(None, help="The per-structure key that names a structure's group "
                                        "(default: mlearn's group, else extended XYZ's config_type)."),
    write: Path | None = typer.Option(None, help="Write the frames with each group's shear stress in the order "
                                      "the model agrees with (extended XYZ)."),
) -> None:
    """Check the stress labels, group by group, against a model's stress and the symmetry of each
    cell: the order of their shear components, then their scale (sign and units)."""
    import ase.io

    from incerta.data.io import read_frames
    from incerta.evaluate.label_check import (
        AS_READ,
        checked_frames,
        implausible_scales,
        label_scale,
        model_stress,
        shear_order_check,
    )
    from incerta.train.checkpoint import load_potential
    from incerta.utils.files import atomic_write

    try:
        frames = read_frames(data, format=fmt)
        predicted = model_stress(load_potential(model), frames)
        check = shear_order_check(predicted, frames, group_by)
    except USER_ERRORS as err:
        fail(err)
    fixed = checked_frames(frames, check, group_by)
    scales = label_scale(predicted, fixed, group_by)
    rows = [[group, entry["structures"], entry["rms_error_GPa"][AS_READ], min(entry["rms_error_GPa"].values()),
             f"{entry['symmetry_violations'][AS_READ]} / {entry['symmetric_cells']}", entry["chosen"],
             scales[group]["scale"], scales[group]["correlation"]] for group, entry in check.items()]
    print_rows(f"stress labels of {data} against {model}",
               ["group", "structures", "RMS shear error as read (GPa)", "best order's (GPa)",
                "cells whose symmetry the labels as read break / cells with a fixed shear component", "order to use",
                "label scale", "correlation"], rows)
    reordered = [group for group, entry in check.items() if entry["chosen"] != AS_READ]
    if reordered:
        console.print(f"[bold yellow]warning:[/] the shear labels of {', '.join(reordered)} match the model "
                      "or the symmetry of their cells only reordered; an order such as 'xz,yz,xy' names, for yz, xz and xy in turn, the place it was found in", highlight=False, soft_wrap=True)
    for group, scale in implausible_scales(scales).items():
        console.print(f"[bold yellow]warning:[/] the labels of {group} match the model only times {scale:.3g} "
                      "(about -1: the opposite sign convention; 0.1 or 10: kBar taken for GPa or the "
                      "reverse; 0.006 or 160: GPa taken for eV/Å^3 or the reverse)", highlight=False, soft_wrap=True)
    if write is not None:
        atomic_write(write, lambda tmp: ase.io.write(tmp, [f.to_atoms() for f in fixed], format="extxyz"))
        console.print(f"{len(fixed)} structures written to {write}")


def print_rows(title: str, header: list[str], rows: list[list]) -> None:
    """A plain table; floats with 3 decimals."""
    table = Table(title=title)
    for name in header:
        table.add_column(name, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    Console(width=max(Console().width, 160)).print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
