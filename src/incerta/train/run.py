"""A whole training run from a config: data -> model -> training -> export -> test metrics.

Run folder layout::

    config.yaml         the resolved configuration
    splits.json         which frames went to train / validation (file, frame)
    checkpoints/        last.pt (every epoch) and best.pt, for resuming
    history.csv         per-epoch metrics
    model/              potential.safetensors: the exported best model
    metrics.json        validation and test errors of the exported model
    report.html         errors, parity plots, error histograms, learning curve (+ figures/),
                        written by the caller (``incerta train``, the experiments, active
                        learning) from the :class:`TrainedRun` that :func:`train_run` returns
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from incerta.config.data import DataSource
from incerta.config.schema import ConfigError
from incerta.config.sources import data_set_name, load_source, prepare_splits
from incerta.config.training import RunConfig
from incerta.data.graph import AtomicGraph, frame_to_graph
from incerta.data.splits import split_indices
from incerta.data.store import GraphStore, StoreView, is_store
from incerta.models.build import DataStatistics, build_potential, fixed_energy, statistics_from_store
from incerta.models.potential import Potential
from incerta.models.predict import error_metrics, graphs_for, model_dtype
from incerta.train.checkpoint import MODEL_FILE, load_potential, load_training_state, potential_digest, save_potential
from incerta.train.trainer import Trainer, write_history
from incerta.utils import distributed
from incerta.utils.files import atomic_write_text

#: Options a resumed run may change (a longer budget); anything else must match.
RESUMABLE_CHANGES = {("training", "epochs"), ("training", "max_time_minutes"),
                     ("training", "early_stopping_patience"), ("training", "progress"), ("training", "device")}


def _differences(old: dict, new: dict, prefix: tuple = ()) -> list[tuple]:
    keys = set(old) | set(new)
    found = []
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, (*prefix, key))
        elif a != b:
            found.append((*prefix, key))
    return found


def _check_resumable(run_dir: Path, config: RunConfig) -> None:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    changed = [d for d in _differences(saved, config.model_dump(mode="json")) if d not in RESUMABLE_CHANGES]
    if changed:
        keys = ", ".join(".".join(map(str, d)) for d in changed)
        raise ConfigError(
            f"{run_dir} holds a run with a different configuration ({keys}); "
            "resume with the same config, or choose a new --run-dir"
        )


def _required_labels(config: RunConfig) -> tuple[str, ...]:
    return ("energy", "forces") if config.training.forces_weight > 0 else ("energy",)


def _e0s(config: RunConfig):
    e0s = config.data.e0s
    return load_source(e0s, ("energy",), 0.0) if isinstance(e0s, DataSource) else e0s


@dataclass
class TrainedRun:
    """A finished run: its folder, metrics.json content, the exported (best) model, the
    per-epoch history and the labelled graphs the model was evaluated on (``validation``,
    then one entry per test set)."""

    run_dir: Path
    metrics: dict
    model: Potential
    history: list[dict]
    datasets: dict[str, Sequence[AtomicGraph]]


def train_run(
    config: RunConfig, run_dir: str | Path, resume: bool = True, member: int = 0, initial_model: Path | None = None
) -> TrainedRun | None:
    """Train (or resume) the run in ``run_dir``; return it (None on data-parallel ranks
    other than the first, which write nothing).

    ``member`` > 0 (ensemble members) changes the initial weights and the data order but
    not the train/validation split, which depends on ``config.seed`` alone.
    ``initial_model`` warm-starts from a trained model (same architecture and reference
    energies) when it knows every element of the data; otherwise training starts afresh.

    >>> import tempfile
    >>> from incerta.config import RunConfig
    >>> from incerta.data import default
    >>> config = RunConfig.model_validate({
    ...     "data": {"train": {"path": str(default.path("train")), "select": ":20"}, "n_val": 5},
    ...     "model": {"l_max": 1, "num_channels": 8, "num_layers": 1},
    ...     "training": {"epochs": 2, "progress": False}})
    >>> run = train_run(config, tempfile.mkdtemp())
    >>> run.metrics["epochs_run"], sorted(run.metrics["validation"])[:2]
    (2, ['energy_mae_meV', 'energy_per_atom_mae_meV'])
    >>> (run.run_dir / "model" / "potential.safetensors").is_file()
    True
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    resuming = resume and checkpoint.is_file()
    if resuming:
        _check_resumable(run_dir, config)
    elif checkpoint.is_file():
        raise ConfigError(f"{run_dir} already holds a training run; resume it or pick another --run-dir")
    main = distributed.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml())

    data = load_run_data(config, _required_labels(config))
    if main:
        atomic_write_text(run_dir / "splits.json", json.dumps(data.record, indent=1))

    seed = config.seed + 1000 * member
    warm = None if initial_model is None else load_potential(initial_model)
    if warm is not None and set(data.statistics.species) <= set(warm.species):
        model = warm.train()
    else:
        model = build_potential(config.model, data.statistics, seed)
    dtype = model_dtype(model)
    trainer = Trainer(
        model, config.training, data.train(dtype), data.validation(dtype),
        run_dir / "checkpoints", seed, config.model_dump_json(),
    )
    if resuming:
        trainer.resume()
    state = trainer.fit()
    if not main:
        return None
    write_history(run_dir / "history.csv", state.history)

    best = load_potential(trainer.best_path)
    saved = run_dir / "model" / MODEL_FILE
    if not saved.is_file() or potential_digest(saved) != potential_digest(best):  # run again: the same weights stay
        save_potential(best, run_dir / "model")
    tests = data.tests(best)
    metrics = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_time_s": state.elapsed_s,
        "validation": error_metrics(best, trainer.validation_graphs),
        "test": {name: error_metrics(best, graphs) for name, graphs in tests.items()},
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return TrainedRun(run_dir, metrics, best, state.history, {"validation": trainer.validation_graphs, **tests})


@dataclass
class RunData:
    """Training and validation graphs (float64, in memory or read lazily from a store),
    the statistics that normalise the model, and the split record."""

    train_float64: Sequence[AtomicGraph]
    validation_float64: Sequence[AtomicGraph]
    statistics: DataStatistics
    record: dict
    test_frames: dict[str, list]

    def train(self, dtype: torch.dtype) -> Sequence[AtomicGraph]:
        return _cast(self.train_float64, dtype)

    def validation(self, dtype: torch.dtype) -> Sequence[AtomicGraph]:
        return _cast(self.validation_float64, dtype)

    def tests(self, model: Potential) -> dict[str, list[AtomicGraph]]:
        return {name: graphs_for(model, frames) for name, frames in self.test_frames.items()}


def _cast(graphs: Sequence[AtomicGraph], dtype: torch.dtype) -> Sequence[AtomicGraph]:
    if isinstance(graphs, StoreView):
        return StoreView(graphs.store, graphs.indices, dtype)
    return [g.to(dtype=dtype) for g in graphs]


def load_run_data(config: RunConfig, require: tuple[str, ...]) -> RunData:
    """In-memory frames from any readers, or a lazily read on-disk store (``.h5``)."""
    data = config.data
    tests = {data_set_name(s.path): load_source(s, (), data.min_distance) for s in data.test}
    stores = [s for s in data.train if is_store(s.path)]
    if not stores:
        splits = prepare_splits(data, config.seed, require)
        train = [frame_to_graph(f, config.model.cutoff) for f in splits.train]
        validation = [frame_to_graph(f, config.model.cutoff) for f in splits.validation]
        statistics = DataStatistics.from_frames(splits.train, train, _e0s(config), fixed=fixed_energy(config.model))
        return RunData(train, validation, statistics, splits.record(), tests)
    if len(data.train) > 1 or data.validation:
        raise ConfigError("data.train: an on-disk store (.h5) must be the only training source; "
                          "its validation split is taken from it (n_val / val_fraction)")
    store = GraphStore(stores[0].path)
    if abs(store.cutoff - config.model.cutoff) > 1e-9:
        raise ConfigError(f"{store.path}: neighbour lists were built for a {store.cutoff} Å cutoff but "
                          f"model.cutoff is {config.model.cutoff} Å; convert the data again or change the cutoff")
    n_val = data.n_val or max(1, round(data.val_fraction * len(store)))
    train_index, val_index = split_indices(len(store), n_val, data.n_train, config.seed)
    statistics = statistics_from_store(store, train_index, _e0s(config), fixed_energy(config.model))
    record = {"store": str(store.path), "train": train_index.tolist(), "validation": val_index.tolist()}
    return RunData(StoreView(store, train_index), StoreView(store, val_index), statistics, record, tests)


def _train_worker(config_json: str, run_dir: str, resume: bool) -> None:
    train_run(RunConfig.model_validate_json(config_json), run_dir, resume)


def train_run_parallel(config: RunConfig, run_dir: str | Path, nprocs: int, resume: bool = True) -> TrainedRun:
    """``train_run`` on ``nprocs`` data-parallel gloo processes on this machine."""
    distributed.spawn(_train_worker, nprocs, config.model_dump_json(), str(run_dir), resume)
    return load_trained_run(config, run_dir)


def load_trained_run(config: RunConfig, run_dir: str | Path) -> TrainedRun:
    """The :class:`TrainedRun` of a finished run folder, read back from its files."""
    run_dir = Path(run_dir)
    model = load_potential(run_dir / "model")
    data = load_run_data(config, _required_labels(config))
    history = load_training_state(run_dir / "checkpoints" / "last.pt")["history"]
    datasets = {"validation": data.validation(model_dtype(model)), **data.tests(model)}
    return TrainedRun(run_dir, json.loads((run_dir / "metrics.json").read_text()), model, history, datasets)
