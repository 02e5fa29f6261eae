"""safetensors files with a format tag and version in their metadata: written atomically,
read back with clear errors; nothing executable is ever stored or unpickled."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from incerta.utils.files import atomic_write
from incerta.utils.version import __version__


class CheckpointError(ValueError):
    """A model or checkpoint file cannot be used; the message says why and what to do."""


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], file_format: str, version: int,
                  metadata: dict[str, str]) -> Path:
    """Atomically write ``tensors`` with ``metadata`` plus the format tag, its version and
    the incerta version (``metadata`` entries win, e.g. to write another version in tests)."""
    header = {"format": file_format, "format_version": str(version), "incerta_version": __version__, **metadata}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=header))


def read_metadata(path: str | Path, file_format: str, version: int, what: str) -> dict[str, str]:
    """Metadata of ``path``, checked to carry ``file_format`` at a version <= ``version``;
    ``what`` names the kind of file in messages ("model", "uncertainty")."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        if zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: this is a PyTorch pickle archive, not an incerta {what}. incerta never "
                "unpickles files (they can run arbitrary code); use a training checkpoint from "
                "an incerta run or a potential.safetensors file."
            ) from err
        raise CheckpointError(f"{path}: corrupt or not a safetensors {what} file ({err})") from err
    if metadata.get("format") != file_format:
        raise CheckpointError(f"{path}: a safetensors file written by another program (no '{file_format}' format tag)")
    written = int(metadata.get("format_version", "0"))
    if written > version:
        raise CheckpointError(
            f"{path}: {what} format {written} written by incerta {metadata.get('incerta_version')}; "
            f"this incerta ({__version__}) reads format <= {version}: upgrade incerta"
        )
    return metadata


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: each name and its values, in the order of the names."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_tensors(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose metadata was checked by :func:`read_metadata`."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt {what} weights ({err})") from err
