"""Settings of the uncertainty methods that train, shared by every command that fits one."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from incerta.config.data import DataSource
from incerta.config.schema import Schema

CalibrationKind = Literal["scale", "power", "isotonic", "conformal"]


class FitSection(Schema):
    """Budget of the uncertainty methods that train (ledl, shallow, svgp, lnk), the
    calibration map (None: chosen by the method) and labelled frames added to the
    validation frames for calibration (e.g. a few reference-labelled frames from a short MD
    run hotter than the training data, so sigma is calibrated where the model will go)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.002, gt=0)
    batch_size: int = Field(5, ge=1)
    calibration: CalibrationKind | None = None
    calibration_data: list[DataSource] = Field(
        [], description="labelled frames calibrated on besides the validation frames (shift-anticipating calibration)")


class UncertaintySection(Schema):
    """The method attached after each training, its constructor options and its fit budget."""

    method: str = "llpr"
    options: dict[str, Any] = {}
    fit: FitSection = FitSection()
