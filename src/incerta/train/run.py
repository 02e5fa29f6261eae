"""A whole training run from a config: data -> model -> training -> export -> test metrics.

Run folder layout::

    config.yaml         the resolved configuration
    splits.json         which frames went to train / validation (file, frame)
    checkpoints/        last.pt (every epoch) and best.pt, for resuming
    history.csv         per-epoch metrics
    model/              potential.safetensors: the exported best model
    metrics.json        validation and test errors of the exported model
    report.html         errors, parity plots, error histograms, learning curve (+ figures/)
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from incerta.config import ConfigError, DataSource, RunConfig
from incerta.data.graph import frame_to_graph
from incerta.data.sources import load_source, prepare_splits
from incerta.evaluate.predict import error_metrics, graphs_for
from incerta.evaluate.training_report import write_training_report
from incerta.models.build import build_potential
from incerta.train.checkpoint import load_potential, save_potential
from incerta.train.trainer import Trainer, write_history
from incerta.utils.files import atomic_write_text

#: Options a resumed run may change (a longer budget); anything else must match.
RESUMABLE_CHANGES = {("training", "epochs"), ("training", "max_time_minutes"),
                     ("training", "early_stopping_patience"), ("training", "progress")}


def _differences(old: dict, new: dict, prefix: tuple = ()) -> list[tuple]:
    keys = set(old) | set(new)
    found = []
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, prefix + (key,))
        elif a != b:
            found.append(prefix + (key,))
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


def _e0s(config: RunConfig):
    e0s = config.data.e0s
    return load_source(e0s, ("energy",), 0.0) if isinstance(e0s, DataSource) else e0s


def train_run(config: RunConfig, run_dir: str | Path, resume: bool = True, member: int = 0) -> dict:
    """Train (or resume) the run in ``run_dir``; return its metrics.json content.

    ``member`` > 0 (ensemble members) changes the initial weights and the data order but
    not the train/validation split, which depends on ``config.seed`` alone.
    """
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    resuming = resume and checkpoint.is_file()
    if resuming:
        _check_resumable(run_dir, config)
    elif checkpoint.is_file():
        raise ConfigError(f"{run_dir} already holds a training run; resume it or pick another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config.to_yaml())

    require = ("energy", "forces") if config.training.forces_weight > 0 else ("energy",)
    splits = prepare_splits(config.data, config.seed, require)
    atomic_write_text(run_dir / "splits.json", json.dumps(splits.record(), indent=1))

    cutoff = config.model.cutoff
    train_graphs = [frame_to_graph(f, cutoff) for f in splits.train]
    seed = config.seed + 1000 * member
    model = build_potential(config.model, splits.train, train_graphs, _e0s(config), seed)
    dtype = next(model.parameters()).dtype
    trainer = Trainer(
        model, config.training,
        [g.to(dtype=dtype) for g in train_graphs], graphs_for(model, splits.validation),
        run_dir / "checkpoints", seed, config.model_dump_json(),
    )
    if resuming:
        trainer.resume()
    state = trainer.fit()
    write_history(run_dir / "history.csv", state.history)

    best = load_potential(trainer.best_path)
    save_potential(best, run_dir / "model")
    metrics = {
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_time_s": state.elapsed_s,
        "validation": error_metrics(best, trainer.validation_graphs),
        "test": {name: error_metrics(best, graphs_for(best, frames)) for name, frames in splits.tests.items()},
    }
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_training_report(run_dir, best, metrics, {"validation": splits.validation, **splits.tests}, state.history)
    return metrics
