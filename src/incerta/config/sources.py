"""From the ``data`` section of a config to validated train / validation / test frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from incerta.config.data import DataConfig, DataSource, parse_slice
from incerta.data.frame import Frame
from incerta.data.io import read_frames
from incerta.data.splits import split_indices, subsample


def load_source(source: DataSource, require: tuple[str, ...] = (), min_distance: float = 0.5) -> list[Frame]:
    """Read one configured file (with its key mapping, units and frame selection)."""
    frames = read_frames(
        source.path, source.format, source.key_map(), source.energy_unit, source.length_unit,
        require=require, min_distance=min_distance,
    )
    return frames[parse_slice(source.select)] if source.select else frames


def load_sources(sources: list[DataSource], require: tuple[str, ...] = (), min_distance: float = 0.5) -> list[Frame]:
    return [f for s in sources for f in load_source(s, require, min_distance)]


@dataclass
class Splits:
    """Frames of a run and the record of where each came from (saved as splits.json)."""

    train: list[Frame]
    validation: list[Frame]
    tests: dict[str, list[Frame]] = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "train": [f.source for f in self.train],
            "validation": [f.source for f in self.validation],
            "test": {name: len(frames) for name, frames in self.tests.items()},
        }


def data_set_name(path: str | Path) -> str:
    """Short label of a data file (tables, legends): its name without folders and data or
    compression suffixes (an n2p2 ``input.data`` is named by its folder)."""
    path = Path(path)
    if path.name == "input.data":
        return path.parent.name
    name = path.name
    for suffix in (".gz", ".bz2", ".xz", ".xyz", ".extxyz", ".npz", ".json", ".db", ".h5"):
        name = name.removesuffix(suffix)
    return name


def prepare_splits(config: DataConfig, seed: int, require: tuple[str, ...] = ("energy", "forces")) -> Splits:
    """Load the training files and split them (seeded), or use the given validation files."""
    frames = load_sources(config.train, require, config.min_distance)
    if config.validation:
        validation = load_sources(config.validation, require, config.min_distance)
        train = [frames[i] for i in subsample(len(frames), config.n_train, seed)]
    else:
        n_val = config.n_val or max(1, round(config.val_fraction * len(frames)))
        train_idx, val_idx = split_indices(len(frames), n_val, config.n_train, seed)
        train, validation = [frames[i] for i in train_idx], [frames[i] for i in val_idx]
    tests = {data_set_name(s.path): load_source(s, (), config.min_distance) for s in config.test}
    return Splits(train, validation, tests)
