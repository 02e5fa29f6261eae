"""The ``data`` section: labelled files, how to read them, and how to split them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from incerta.config.schema import Schema, as_list, at_least, one_of
from incerta.data.io import ENERGY_UNITS, LENGTH_UNITS, KeyMap


def parse_slice(text: str) -> slice:
    """'10:20', ':100', '::2' -> slice."""
    parts = text.split(":")
    if len(parts) > 3 or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
        raise ValueError(f"'{text}' is not a slice like ':100' or '10:20:2'")
    values = [int(p) if p.strip() else None for p in parts]
    return slice(*values) if len(values) > 1 else slice(values[0], values[0] + 1)


class DataSource(Schema):
    """One labelled file. A plain string in YAML is shorthand for ``{path: ...}``."""

    path: Path
    format: Literal["auto", "extxyz", "npz", "n2p2", "spookynet", "mlearn", "hdf5"] = "auto"
    keys: dict[Literal["energy", "forces", "stress", "virial", "charge", "spin", "atomic_charges", "dipole"], str] = {}
    energy_unit: str | None = None
    length_unit: str | None = None
    select: str | None = Field(None, description="Python-style slice of frames, e.g. ':100' or '::2'")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value

    _energy_unit = field_validator("energy_unit")(one_of(ENERGY_UNITS))
    _length_unit = field_validator("length_unit")(one_of(LENGTH_UNITS))

    @field_validator("select")
    @classmethod
    def _slice(cls, value: str | None) -> str | None:
        if value is not None:
            parse_slice(value)
        return value

    def key_map(self) -> KeyMap:
        return KeyMap(**self.keys)


class DataConfig(Schema):
    """Where the training data is and how to split it."""

    train: list[DataSource]
    validation: list[DataSource] = []
    test: list[DataSource] = []
    n_train: int | None = Field(None, ge=1, description="use at most this many training frames")
    n_val: int | None = Field(None, ge=1, description="validation frames split off the training files")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="used when neither validation nor n_val is given")
    e0s: dict[str, float] | DataSource | None = Field(None, description="isolated-atom energies (eV) or a file of one-atom frames")
    min_distance: float = Field(0.5, ge=0, description="atoms closer than this (Å) are rejected as overlapping")

    _lists = field_validator("train", "validation", "test", mode="before")(as_list)
    _non_empty = field_validator("train")(at_least(1, "give at least one training file"))

    @field_validator("e0s", mode="before")
    @classmethod
    def _e0s_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value
