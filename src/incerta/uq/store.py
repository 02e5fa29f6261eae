"""Attach an uncertainty method to a model folder, and load it back.

``MODEL/uncertainty.safetensors`` holds the method's tensors and, as metadata, the
method name, its constructor options, the calibration and the fit report. The base
potential stays in ``MODEL/potential.safetensors``; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from incerta import __version__
from incerta.train.checkpoint import CheckpointError, load_potential, model_file
from incerta.uq.base import UncertaintyMethod
from incerta.uq.calibration import Calibration
from incerta.uq.methods import METHODS
from incerta.uq.model import Aggregate, UncertainPotential
from incerta.utils.files import atomic_write

UQ_FILE = "uncertainty.safetensors"
UQ_FORMAT = "incerta.uncertainty"
UQ_FORMAT_VERSION = 1


def uncertainty_file(model: str | Path) -> Path:
    return model_file(model).parent / UQ_FILE


def has_uncertainty(model: str | Path) -> bool:
    try:
        return uncertainty_file(model).is_file()
    except CheckpointError:
        return False


def save_uncertainty(model: str | Path, method: UncertaintyMethod, calibration: Calibration, report: dict) -> Path:
    """Write (atomically) the fitted method and its calibration beside the potential."""
    target = uncertainty_file(model)
    tensors = {
        k: v.detach().contiguous().clone() for k, v in method.state_dict().items()
        if method.modifies_potential or not k.startswith("potential.")
    }
    metadata = {
        "format": UQ_FORMAT, "format_version": str(UQ_FORMAT_VERSION), "incerta_version": __version__,
        "method": method.name, "options": json.dumps(method.options()),
        "calibration": calibration.to_json(), "report": json.dumps(report),
    }
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return target


def read_uncertainty_metadata(model: str | Path) -> dict[str, str]:
    path = uncertainty_file(model)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt uncertainty file ({err})") from err
    if metadata.get("format") != UQ_FORMAT:
        raise CheckpointError(f"{path}: not an incerta uncertainty file")
    if int(metadata.get("format_version", "0")) > UQ_FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer incerta ({metadata.get('incerta_version')}); upgrade incerta")
    if metadata.get("method") not in METHODS:
        raise CheckpointError(f"{path}: unknown uncertainty method '{metadata.get('method')}'")
    return metadata


def load_uncertain_potential(model: str | Path, aggregate: Aggregate = "max") -> UncertainPotential:
    """The potential of ``model`` with its attached, calibrated uncertainty method."""
    metadata = read_uncertainty_metadata(model)
    potential = load_potential(model)
    method = METHODS[metadata["method"]].rebuild(potential, json.loads(metadata["options"]))
    state = method.state_dict()
    try:
        state.update(load_file(str(uncertainty_file(model))))
        method.load_state_dict(state)
    except (RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{uncertainty_file(model)}: does not match the method's structure ({err})") from err
    return UncertainPotential(method.eval(), Calibration.from_json(metadata["calibration"]), aggregate)
