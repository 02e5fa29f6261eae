"""Attach a calibrated uncertainty method to a trained model (what ``incerta uq fit`` runs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from incerta.config.schema import ConfigError
from incerta.config.sources import Splits, load_sources, prepare_splits
from incerta.config.training import RunConfig
from incerta.config.uncertainty import CalibrationKind
from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph
from incerta.models.potential import Potential
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import load_potential, model_file, save_potential
from incerta.uq.base import FitSettings, UncertaintyMethod
from incerta.uq.calibration import Calibration
from incerta.uq.ensemble import DeepEnsemble
from incerta.uq.methods import METHODS
from incerta.uq.predict import collect
from incerta.uq.store import save_uncertainty
from incerta.uq.stress_symmetry import free_stress_mask
from incerta.utils.distributed import training_device


def calibrate(method: UncertaintyMethod, graphs: Sequence[AtomicGraph], kind: CalibrationKind | None = None) -> Calibration:
    """Fit the score -> error maps of ``method`` on labelled (validation) graphs (a stress map
    too when at least ``MIN_STRESS_STRUCTURES`` periodic ones have stress labels; components
    their symmetry fixes at zero left out)."""
    arrays = collect(method, graphs)
    calibration = Calibration.fit(
        arrays["atom_score"], arrays["forces_pred"] - arrays["forces_ref"],
        arrays["energy_score"], arrays["energy_pred"] - arrays["energy_ref"],
        method.score_kind, kind or method.default_calibration, numbers=arrays["numbers"],
    )
    if "stress_ref" in arrays:
        free = np.concatenate([free_stress_mask(graph).cpu().numpy() for graph in graphs])
        calibration.fit_stress(arrays["atom_score"], arrays["numbers"], arrays["structure"], arrays["volume"],
                               arrays["stress_pred"] - arrays["stress_ref"], arrays.get("stress_score"), free)
    return calibration


def run_splits(model: str | Path) -> Splits:
    """Train/validation frames of the run a model folder belongs to (its config.yaml)."""
    run_dir = model_file(model).parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{model}: not inside a training run (no {config_path}); give --train and --val data")
    config = RunConfig.model_validate(yaml.safe_load(config_path.read_text()))
    return prepare_splits(config.data, config.seed)


def fit_uncertainty(
    model: str | Path,
    method: str,
    train: Sequence[Frame],
    validation: Sequence[Frame],
    options: dict | None = None,
    settings: FitSettings | None = None,
) -> dict:
    """Fit ``method`` on ``train``, calibrate on ``validation`` (map ``settings.calibration``,
    by default the method's), save into ``model``; return the report.

    >>> import tempfile
    >>> from incerta.data import default
    >>> from incerta.data.io import read_frames
    >>> from incerta.models.potential import Potential
    >>> from incerta.models.spec import PotentialSpec
    >>> folder = tempfile.mkdtemp()  # usually RUN_DIR/model of a training run
    >>> _ = save_potential(Potential(PotentialSpec(species=[1, 6, 8], num_channels=8, l_max=1)), folder)
    >>> frames = read_frames(default.path("train"))[:30]
    >>> report = fit_uncertainty(folder, "gmm", frames[:20], frames[20:], settings=FitSettings(progress=False))
    >>> report["method"], report["n_validation"], report["calibration"]
    ('gmm', 10, 'power')
    """
    if method not in METHODS or method == "ensemble":
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(n for n in METHODS if n != 'ensemble')} "
                          "(ensembles are trained with: incerta train CONFIG --ensemble K)")
    settings = settings or FitSettings()
    training_device(settings.device, "the fit's device")  # a GPU PyTorch cannot see: DeviceError
    potential = load_potential(model).to(settings.device)
    instance = METHODS[method](potential, **(options or {}))
    return _fit_and_save(model, instance, graphs_for(potential, train), graphs_for(potential, validation), settings)


def attach_ensemble(model: str | Path, members: Sequence[Potential], validation: Sequence[Frame],
                    calibration: CalibrationKind | None = None, training_time_s: float = 0.0) -> dict:
    """Save ``members`` as a calibrated deep ensemble in the model folder ``model``; its fit time
    is ``training_time_s``, the members' total training time."""
    save_potential(members[0], model)
    ensemble = DeepEnsemble.from_members(members)
    return _fit_and_save(model, ensemble, [], graphs_for(members[0], validation), FitSettings(calibration=calibration),
                         training_time_s)


def _fit_and_save(model: str | Path, instance: UncertaintyMethod, train: Sequence[AtomicGraph],
                  validation: Sequence[AtomicGraph], settings: FitSettings, training_time_s: float = 0.0) -> dict:
    """Fit, then calibrate on the validation graphs plus ``settings.calibration_data`` (which
    the fit also sees as validation data), all on ``settings.device``, and save into ``model``."""
    extra = graphs_for(instance.potential, load_sources(settings.calibration_data, ("energy", "forces")))
    train, validation = ([graph.to(settings.device) for graph in graphs] for graphs in (train, [*validation, *extra]))
    started = time.perf_counter()
    info = instance.fit(train, validation, settings)
    instance.eval()
    fit_time = training_time_s + time.perf_counter() - started
    fitted = calibrate(instance, validation, settings.calibration)
    report = {"method": instance.name, "fit_time_s": fit_time, "n_train": len(train), "n_validation": len(validation),
              "n_calibration_data": len(extra), "calibration": fitted.forces.kind, "fit": info}
    save_uncertainty(model, instance, fitted, report)
    return report
