"""Saving and loading models and training state without ever unpickling objects.

* A **model** is a ``.safetensors`` file (or a folder holding ``potential.safetensors``):
  tensors plus string metadata ``format``, ``format_version``, ``incerta_version`` and
  ``spec`` (the JSON architecture and data statistics). Nothing executable is stored.
* A **training checkpoint** (``last.pt`` / ``best.pt``) is a ``torch.save`` of plain
  containers of tensors and numbers, read back with ``torch.load(weights_only=True)``,
  which refuses pickled objects.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from incerta.models.potential import Potential
from incerta.models.predict import model_dtype
from incerta.models.spec import PotentialSpec
from incerta.nn.codegen import CODEGEN_LOCK
from incerta.utils.files import atomic_write
from incerta.utils.tensor_files import CheckpointError, read_metadata, read_tensors, tensors_digest, write_tensors

MODEL_FORMAT = "incerta.potential"
MODEL_FORMAT_VERSION = 1
MODEL_FILE = "potential.safetensors"


def model_file(path: str | Path) -> Path:
    """The weights file behind ``path`` (a model folder, a run folder, or the file itself)."""
    path = Path(path)
    for candidate in (path / MODEL_FILE, path / "model" / MODEL_FILE):
        if path.is_dir() and candidate.is_file():
            return candidate
    if path.is_dir():
        raise CheckpointError(f"{path}: folder holds no {MODEL_FILE}; is it an incerta model or run folder?")
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file or folder")
    return path


def is_model_folder(path: str | Path) -> bool:
    """Whether the folder ``path`` holds a saved potential."""
    return (Path(path) / MODEL_FILE).is_file()


def model_dtype_name(model: torch.nn.Module) -> str:
    """'float32' or 'float64': the dtype of the weights, as stored beside them."""
    return str(model_dtype(model)).removeprefix("torch.")


def save_potential(model: Potential, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` (a folder gets ``potential.safetensors``) atomically."""
    path = Path(path)
    target = path / MODEL_FILE if path.suffix != ".safetensors" else path
    metadata = {"spec": model.spec.model_dump_json(), "dtype": model_dtype_name(model), **(extra or {})}
    return write_tensors(target, model.state_dict(), MODEL_FORMAT, MODEL_FORMAT_VERSION, metadata)


def potential_digest(source: str | Path | Potential) -> str:
    """SHA-256 of a potential's architecture (its spec) and tensors, of a saved model (folder or
    file) or of one in memory. Not of a file's bytes: safetensors writes the metadata in another
    order on every save, so the same weights saved twice differ in bytes, not in this digest."""
    if isinstance(source, Potential):
        spec, tensors = source.spec.model_dump_json(), source.state_dict()
    else:
        path = model_file(source)
        spec, tensors = read_model_metadata(path)["spec"], read_tensors(path, "model")
    return hashlib.sha256((spec + tensors_digest(tensors)).encode()).hexdigest()


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a saved model, checked to be an incerta model of a readable version."""
    return read_metadata(model_file(path), MODEL_FORMAT, MODEL_FORMAT_VERSION, "model")


def spec_from_json(text: str, origin: str) -> PotentialSpec:
    try:
        return PotentialSpec.model_validate_json(text)
    except ValidationError as err:
        raise CheckpointError(f"{origin}: unreadable model description ({err})") from err


@functools.lru_cache(maxsize=8)
def _architecture(spec_json: str) -> Potential:
    """A module of the architecture ``spec_json``, built once and kept (the last 8): building e3nn's
    code for an architecture (einsum paths, activation normalisation) takes 0.5-0.8 s, a copy 0.16-0.3 s."""
    return Potential(PotentialSpec.model_validate_json(spec_json))


def _built(spec: PotentialSpec) -> Potential:
    """A new module of architecture ``spec`` (its weights to be loaded): a copy of one built before."""
    with CODEGEN_LOCK:
        return copy.deepcopy(_architecture(spec.model_dump_json()))


def build_loaded(spec: PotentialSpec, state: dict[str, torch.Tensor], dtype: str, origin: str) -> Potential:
    model = _built(spec).to(getattr(torch, dtype))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{origin}: weights do not match the stored architecture ({err})") from err
    return model.eval()


def load_potential(path: str | Path) -> Potential:
    """Load a model from a model folder, run folder, ``.safetensors`` file or training checkpoint."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        state = load_training_state(path)
        return build_loaded(spec_from_json(state["spec"], str(path)), state["ema"] or state["model"], state["dtype"], str(path))
    metadata = read_model_metadata(path)
    file = model_file(path)
    return build_loaded(spec_from_json(metadata["spec"], str(file)), read_tensors(file, "model"),
                        metadata.get("dtype", "float32"), str(file))


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically ``torch.save`` plain tensors/numbers/strings (no objects)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True``; clear errors for bad files."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load: the file holds pickled Python objects, which could run "
            "code. Only incerta training checkpoints (tensors and numbers) are accepted."
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != "incerta.training":
        raise CheckpointError(f"{path}: not an incerta training checkpoint (written by another program?)")
    return state
