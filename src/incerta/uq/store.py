"""Attach an uncertainty method to a model folder, and load it back.

``MODEL/uncertainty.safetensors`` holds the method's tensors and, as metadata, the
method name, its constructor options, the calibration, the fit report and the digest of the
potential it was fitted for (:func:`incerta.train.checkpoint.potential_digest`). The base potential stays in ``MODEL/potential.safetensors``;
nothing is ever unpickled. A model trained again after its fit has other weights: its
uncertainty is then refused when loaded, never applied to weights it was not fitted for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from incerta.train.checkpoint import load_potential, model_file, potential_digest
from incerta.uq.base import UncertaintyMethod
from incerta.uq.calibration import Calibration
from incerta.uq.methods import METHODS
from incerta.uq.model import Aggregate, UncertainPotential
from incerta.utils.tensor_files import CheckpointError, read_metadata, read_tensors, write_tensors

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


def uncertainty_is_current(model: str | Path) -> bool:
    """Whether ``model`` holds an uncertainty fitted for its present potential."""
    return has_uncertainty(model) and _fitted_for_present_weights(model, read_uncertainty_metadata(model))


def _fitted_for_present_weights(model: str | Path, metadata: dict[str, str]) -> bool:
    """Whether the fit of ``metadata`` was made for ``model``'s present potential (fits written
    before the digest of the contents recorded that of the file's bytes; before that, nothing:
    those count as made for it)."""
    if "potential_digest" in metadata:
        return metadata["potential_digest"] == potential_digest(model)
    file_bytes = metadata.get("potential_sha256")
    return file_bytes is None or file_bytes == hashlib.sha256(model_file(model).read_bytes()).hexdigest()


def save_uncertainty(model: str | Path, method: UncertaintyMethod, calibration: Calibration, report: dict) -> Path:
    """Write (atomically) the fitted method and its calibration beside the potential."""
    tensors = {
        k: v.detach().cpu().clone() for k, v in method.state_dict().items()
        if method.modifies_potential or "potential" not in k.split(".")[:-1]  # the base potential is saved beside
    }
    metadata = {"method": method.name, "options": json.dumps(method.options()),
                "calibration": calibration.to_json(), "report": json.dumps(report),
                "potential_digest": potential_digest(model)}
    return write_tensors(uncertainty_file(model), tensors, UQ_FORMAT, UQ_FORMAT_VERSION, metadata)


def read_uncertainty_metadata(model: str | Path) -> dict[str, str]:
    path = uncertainty_file(model)
    metadata = read_metadata(path, UQ_FORMAT, UQ_FORMAT_VERSION, "uncertainty")
    if metadata.get("method") not in METHODS:
        raise CheckpointError(f"{path}: unknown uncertainty method '{metadata.get('method')}'")
    return metadata


def load_uncertain_potential(model: str | Path, aggregate: Aggregate = "max") -> UncertainPotential:
    """The potential of ``model`` with its attached, calibrated uncertainty method."""
    metadata = read_uncertainty_metadata(model)
    if not _fitted_for_present_weights(model, metadata):
        raise CheckpointError(f"{uncertainty_file(model)} was fitted for other weights than {model_file(model)} "
                              "(the model was trained again after `incerta uq fit`?): run `incerta uq fit` again")
    potential = load_potential(model)
    method = METHODS[metadata["method"]].rebuild(potential, json.loads(metadata["options"]))
    state = method.state_dict()
    state.update(read_tensors(uncertainty_file(model), "uncertainty"))
    try:
        method.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{uncertainty_file(model)}: does not match the method's structure ({err})") from err
    return UncertainPotential(method.eval(), Calibration.from_json(metadata["calibration"]), aggregate)
