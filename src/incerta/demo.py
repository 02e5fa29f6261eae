"""The main job on the embedded default data: train, evaluate, report."""

from __future__ import annotations

from pathlib import Path

from incerta.config import RunConfig
from incerta.data import default
from incerta.train.run import train_run

DEMO_SETTINGS = {
    "seed": 0,
    "model": {"l_max": 1, "num_channels": 32, "num_layers": 3, "cutoff": 5.0},
    "training": {"epochs": 60, "batch_size": 5, "lr": 0.01, "scheduler_patience": 5, "ema_decay": 0.99},
}


def demo_config(epochs: int | None = None) -> RunConfig:
    """GFN2-xTB ethanol: train at 300 K (50 frames for validation), test at 300/600/1200 K."""
    settings = {
        **DEMO_SETTINGS,
        "data": {
            "train": str(default.path("train")),
            "n_val": 50,
            "e0s": str(default.path("isolated_atoms")),
            "test": [str(default.path(k)) for k in ("test_300K", "test_600K", "test_1200K")],
        },
    }
    config = RunConfig.model_validate(settings)
    if epochs is not None:
        config.training.epochs = epochs
    return config


def run_demo(out: Path, epochs: int | None = None) -> dict:
    """Train the demo model into ``out`` (resuming if interrupted); returns its metrics."""
    return train_run(demo_config(epochs), out, resume=True)
