"""Schemas of the uncertainty experiments: temperature shift and out-of-distribution matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from incerta.config.data import DataSource
from incerta.config.model import ModelConfig
from incerta.config.schema import Schema, at_least
from incerta.config.training import RunConfig, TrainingConfig
from incerta.config.uncertainty import FitSection


class MethodVariant(Schema):
    """A method with its own constructor options and fit settings (the section's by default)."""

    method: str
    options: dict[str, Any] = {}
    fit: FitSection | None = None


class ShiftSection(Schema):
    """Temperature-shift (or any labelled-groups) experiment."""

    groups: dict[str, DataSource] = Field(..., description="ordered test groups; the first is in-distribution")
    methods: list[str] = ["gmm", "llpr", "svgp"]
    variants: dict[str, MethodVariant] = Field(
        {}, description="more methods under their own names, each with its options and fit settings")
    ensemble: int = Field(0, ge=0, description="members of a deep ensemble to add (0 = none)")
    model: Path | None = Field(None, description="use this trained model folder instead of training one")
    aggregate: Literal["max", "mean", "sum"] = "max"
    max_frames: int | None = Field(None, ge=2, description="frames used per group")
    fit: FitSection = FitSection()

    _two_groups = field_validator("groups")(at_least(2, "give at least two groups (in-distribution first)"))

    @model_validator(mode="after")
    def _distinct_names(self) -> ShiftSection:
        clashes = sorted(set(self.methods) & set(self.variants))
        if clashes:
            raise ValueError(f"variants {clashes} have the names of methods; give them other names")
        return self


class ShiftConfig(RunConfig):
    """A run configuration (used to train the model) plus the ``shift`` section."""

    shift: ShiftSection


class OODDataset(Schema):
    train: DataSource
    test: DataSource


class OODSection(Schema):
    """One model per dataset, every model tested on every dataset."""

    datasets: dict[str, OODDataset]
    methods: list[str] = ["gmm", "llpr"]
    n_train: int | None = Field(None, ge=1, description="training frames per dataset")
    n_val: int = Field(50, ge=1)
    max_test: int | None = Field(None, ge=4, description="test frames used per dataset")
    aggregate: Literal["max", "mean", "sum"] = "max"
    fit: FitSection = FitSection()
    e0s: dict[str, float] | DataSource | None = None

    _two_datasets = field_validator("datasets")(at_least(2, "give at least two datasets"))


class OODConfig(Schema):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    ood: OODSection
