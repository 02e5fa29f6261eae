"""Model files load back exactly, and bad files fail clearly without unpickling anything."""

from __future__ import annotations

import hashlib
import pickle
import threading

import pytest
import torch
from safetensors.torch import save_file

from conftest import emt_ethanol_frames, make_model
from incerta.calculators.ase import IncertaCalculator
from incerta.testing import predict
from incerta.train.checkpoint import CheckpointError, load_potential, load_training_state, model_file, save_potential
from incerta.uq.base import FitSettings
from incerta.uq.fit import fit_uncertainty
from incerta.uq.store import (
    UQ_FORMAT,
    UQ_FORMAT_VERSION,
    load_uncertain_potential,
    read_uncertainty_metadata,
    uncertainty_file,
    uncertainty_is_current,
)
from incerta.utils.tensor_files import read_tensors, write_tensors


def test_roundtrip_gives_identical_predictions(tmp_path, ethanol):
    model = make_model()
    save_potential(model, tmp_path / "model")
    loaded = load_potential(tmp_path / "model")
    assert predict(loaded, ethanol)["energy"] == predict(model, ethanol)["energy"]
    assert next(loaded.parameters()).dtype == torch.float64
    assert loaded.spec == model.spec


def test_loads_of_one_architecture_are_independent_models(tmp_path, ethanol):
    """Loads copy an already built module of the architecture: each is its own module with the
    file's weights, and changing one changes neither the next load nor a model of other weights."""
    model, other = make_model(seed=1), make_model(seed=2)
    save_potential(model, tmp_path / "a")
    save_potential(other, tmp_path / "b")
    first = load_potential(tmp_path / "a")
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)
    second, third = load_potential(tmp_path / "a"), load_potential(tmp_path / "b")
    assert predict(second, ethanol)["energy"] == predict(model, ethanol)["energy"]
    assert predict(third, ethanol)["energy"] == predict(other, ethanol)["energy"]
    assert predict(first, ethanol)["energy"] != predict(model, ethanol)["energy"]
    assert second is not first and next(second.parameters()) is not next(first.parameters())


def test_threads_load_models_at_the_same_time(tmp_path, ethanol):
    """Building and copying a model traces e3nn's code with torch.fx, which is not thread-safe:
    loads from several threads at once (each building its architecture) all succeed, with the
    right weights."""
    models = [make_model(seed=s, l_max=s % 3, cutoff=4.0 + 0.1 * s) for s in range(4)]
    for index, model in enumerate(models):
        save_potential(model, tmp_path / str(index))
    loaded: dict[int, list] = {index: [] for index in range(len(models))}

    def load(index: int) -> None:
        for _ in range(3):
            loaded[index].append(load_potential(tmp_path / str(index)))

    threads = [threading.Thread(target=load, args=(index,)) for index in range(len(models))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, model in enumerate(models):
        assert len(loaded[index]) == 3, "a load failed in its thread"
        assert predict(loaded[index][-1], ethanol)["energy"] == predict(model, ethanol)["energy"]


def test_an_uncertainty_fitted_for_other_weights_is_refused(tmp_path):
    """A model trained again after its uncertainty fit: the old fit is refused when loaded (its
    calibration belongs to the old weights), and a new fit is accepted."""
    frames = emt_ethanol_frames(12, 0.1)
    save_potential(make_model(seed=1), tmp_path)
    fit_uncertainty(tmp_path, "gmm", frames[:8], frames[8:], settings=FitSettings(progress=False))
    assert uncertainty_is_current(tmp_path)
    load_uncertain_potential(tmp_path)
    save_potential(make_model(seed=2), tmp_path)  # trained again: other weights, the same file name
    assert not uncertainty_is_current(tmp_path)
    with pytest.raises(CheckpointError, match=r"fitted for other weights .* run `incerta uq fit` again"):
        load_uncertain_potential(tmp_path)
    with pytest.raises(CheckpointError, match="fitted for other weights"):
        IncertaCalculator(tmp_path)
    fit_uncertainty(tmp_path, "gmm", frames[:8], frames[8:], settings=FitSettings(progress=False))
    assert uncertainty_is_current(tmp_path)
    load_uncertain_potential(tmp_path)


def test_the_same_weights_saved_again_keep_their_fit(tmp_path):
    """A finished run run again saves the same potential again. safetensors writes the metadata
    in another order each time, so the file's bytes differ, but the fit is still for those
    weights and stays current. A fit written before records the digest of the file's bytes and
    is checked that way."""
    frames = emt_ethanol_frames(12, 0.1)
    first = save_potential(make_model(seed=1), tmp_path).read_bytes()
    fit_uncertainty(tmp_path, "gmm", frames[:8], frames[8:], settings=FitSettings(progress=False))
    again = [save_potential(load_potential(tmp_path), tmp_path).read_bytes() for _ in range(4)]
    assert any(data != first for data in again), "the same weights in other bytes, or this test proves nothing"
    assert uncertainty_is_current(tmp_path)
    path = uncertainty_file(tmp_path)
    metadata = read_uncertainty_metadata(tmp_path)
    del metadata["potential_digest"]
    metadata["potential_sha256"] = hashlib.sha256(model_file(tmp_path).read_bytes()).hexdigest()
    write_tensors(path, read_tensors(path, "uncertainty"), UQ_FORMAT, UQ_FORMAT_VERSION, metadata)
    assert uncertainty_is_current(tmp_path)
    save_potential(make_model(seed=2), tmp_path)
    assert not uncertainty_is_current(tmp_path)


def test_corrupt_file(tmp_path):
    path = save_potential(make_model(), tmp_path / "model")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt"):
        load_potential(tmp_path / "model")
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"corrupt or not a safetensors"):
        load_potential(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"written by another program"):
        load_potential(path)


def test_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"format": "incerta.training", "model": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load"):
        load_potential(path)
    assert not marker.exists(), "the payload must never run"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_training_state(raw)
    assert not marker.exists()


def test_pytorch_archive_from_another_program(tmp_path):
    path = tmp_path / "model.model"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"PyTorch pickle archive, not an incerta model"):
        IncertaCalculator(path)


def test_newer_format_version_is_refused(tmp_path):
    model = make_model()
    path = save_potential(model, tmp_path / "m.safetensors", extra={"format_version": "99"})
    with pytest.raises(CheckpointError, match=r"upgrade incerta"):
        load_potential(path)


def test_missing_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such model"):
        load_potential(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds no potential.safetensors"):
        load_potential(tmp_path / "empty")
