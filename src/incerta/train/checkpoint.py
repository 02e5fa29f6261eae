"""Saving and loading models and training state without ever unpickling objects.

* A **model** is a ``.safetensors`` file (or a folder holding ``potential.safetensors``):
  tensors plus string metadata ``format``, ``format_version``, ``incerta_version`` and
  ``spec`` (the JSON architecture and data statistics). Nothing executable is stored.
* A **training checkpoint** (``last.pt`` / ``best.pt``) is a ``torch.save`` of plain
  containers of tensors and numbers, read back with ``torch.load(weights_only=True)``,
  which refuses pickled objects.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from incerta import __version__
from incerta.models.potential import Potential, PotentialSpec
from incerta.utils.files import atomic_write

MODEL_FORMAT = "incerta.potential"
MODEL_FORMAT_VERSION = 1
MODEL_FILE = "potential.safetensors"


class CheckpointError(ValueError):
    """A model or checkpoint file cannot be used; the message says why and what to do."""


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


def save_potential(model: Potential, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` (a folder gets ``potential.safetensors``) atomically."""
    path = Path(path)
    target = path / MODEL_FILE if path.suffix != ".safetensors" else path
    metadata = {
        "format": MODEL_FORMAT,
        "format_version": str(MODEL_FORMAT_VERSION),
        "incerta_version": __version__,
        "spec": json.dumps(model.spec.to_dict()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return target


def read_model_metadata(path: str | Path) -> dict[str, str]:
    """Metadata of a saved model, checked to be an incerta model of a readable version."""
    file = model_file(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        if zipfile.is_zipfile(file):
            raise CheckpointError(
                f"{file}: this is a PyTorch pickle archive, not an incerta model. incerta never "
                "unpickles files (they can run arbitrary code); use a training checkpoint from "
                "an incerta run or a potential.safetensors file."
            ) from err
        raise CheckpointError(f"{file}: corrupt or not a safetensors model file ({err})") from err
    if metadata.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{file}: a safetensors file written by another program (no '{MODEL_FORMAT}' format tag)")
    version = int(metadata.get("format_version", "0"))
    if version > MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: model format {version} written by incerta {metadata.get('incerta_version')}; "
            f"this incerta ({__version__}) reads format <= {MODEL_FORMAT_VERSION}: upgrade incerta"
        )
    return metadata


def spec_from_json(text: str, origin: str) -> PotentialSpec:
    try:
        return PotentialSpec(**json.loads(text))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{origin}: unreadable model description ({err})") from err


def build_loaded(spec: PotentialSpec, state: dict[str, torch.Tensor], dtype: str, origin: str) -> Potential:
    model = Potential(spec).to(getattr(torch, dtype))
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
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: corrupt weights ({err})") from err
    return build_loaded(spec_from_json(metadata["spec"], str(file)), state, metadata.get("dtype", "float32"), str(file))


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
