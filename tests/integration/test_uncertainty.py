"""Every uncertainty method on a small real slice of acetylacetone (train 300 K, test 300/600 K)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from incerta import IncertaCalculator
from incerta.config import RunConfig
from incerta.config.sources import prepare_splits
from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.data.io import read_frames
from incerta.models.predict import graphs_for
from incerta.train.run import train_run
from incerta.uq import metrics as uq_metrics
from incerta.uq.base import FitSettings
from incerta.uq.ensemble_training import train_ensemble
from incerta.uq.fit import fit_uncertainty
from incerta.uq.methods import POST_TRAINING
from incerta.uq.predict import collect
from incerta.uq.store import load_uncertain_potential
from incerta.utils.distributed import DeviceError

SETTINGS = {
    "seed": 1,
    "model": {"l_max": 1, "num_channels": 16, "num_layers": 2, "radial_hidden": [32], "readout_hidden": 16},
    "training": {"epochs": 25, "lr": 0.01, "scheduler_patience": 5, "progress": False},
}
FIT = FitSettings(epochs=6, lr=0.002, progress=False)


def run_config(acac) -> RunConfig:
    data = {"train": {"path": str(acac / "train_300K.xyz"), "select": ":150"}, "n_val": 30,
            "e0s": str(acac / "isolated_atoms.xyz")}
    return RunConfig.model_validate({**SETTINGS, "data": data})


@pytest.fixture(scope="module")
def base_run(acac, tmp_path_factory):
    run = tmp_path_factory.mktemp("uq") / "base"
    config = run_config(acac)
    train_run(config, run)
    return run, prepare_splits(config.data, config.seed)


@pytest.fixture(scope="module")
def tests(acac):
    return {t: read_frames(acac / f"test_MD_{t}.xyz")[:60] for t in ("300K", "600K")}


@pytest.fixture(scope="module")
def ensemble_model(acac, tmp_path_factory):
    run = tmp_path_factory.mktemp("uq") / "ensemble"
    train_ensemble(run_config(acac), run, members=2, workers=2)
    return run / "model"


@pytest.fixture(scope="module")
def fitted(base_run, tmp_path_factory):
    """fitted(method): a copy of the base model with ``method`` attached, fitted once per module."""
    run, splits = base_run
    models = {}

    def attach(method: str):
        if method not in models:
            model = tmp_path_factory.mktemp(method) / "model"
            model.mkdir()
            (model / "potential.safetensors").write_bytes((run / "model" / "potential.safetensors").read_bytes())
            fit_uncertainty(model, method, splits.train, splits.validation, settings=FIT)
            models[method] = model
        return models[method]

    return attach


def check_quality(model, tests, splits):
    uncertain = load_uncertain_potential(model)
    arrays = {t: collect(uncertain, graphs_for(uncertain.potential, frames)) for t, frames in tests.items()}
    means = {t: a["forces_uncertainty"].mean() for t, a in arrays.items()}
    assert means["600K"] > means["300K"], f"uncertainty must rise with temperature: {means}"
    both = {k: np.concatenate([arrays["300K"][k], arrays["600K"][k]]) for k in ("forces_uncertainty", "forces_pred", "forces_ref")}
    error = np.linalg.norm(both["forces_pred"] - both["forces_ref"], axis=1)
    rho = uq_metrics.spearman(both["forces_uncertainty"], error)
    assert rho > 0.15, f"per-atom Spearman {rho:.3f} not clearly above 0"
    return uncertain, arrays


def assert_plain_pass_predicts_the_same(model, atoms) -> None:
    """Energy and forces asked alone (MD steps between checks) are those of the uncertainty pass."""
    plain, watched = atoms.copy(), atoms.copy()
    plain.calc, watched.calc = IncertaCalculator(model), IncertaCalculator(model)
    forces = plain.get_forces()
    assert "forces_uncertainty" not in plain.calc.results, "no uncertainty unless asked for"
    watched.calc.get_property("forces_uncertainty", watched)
    np.testing.assert_allclose(watched.get_forces(), forces, rtol=1e-4, atol=1e-5)
    assert watched.get_potential_energy() == pytest.approx(plain.get_potential_energy(), abs=1e-4)


@pytest.mark.parametrize("method", POST_TRAINING)
def test_method_on_real_data(method, fitted, tests, base_run):
    model = fitted(method)
    uncertain, arrays = check_quality(model, tests, base_run[1])

    # save/load round-trip gives identical uncertainties
    again = load_uncertain_potential(model)
    graphs = graphs_for(again.potential, tests["600K"][:5])
    np.testing.assert_allclose(collect(again, graphs)["forces_uncertainty"],
                               collect(uncertain, graphs)["forces_uncertainty"], rtol=1e-5)

    atoms = tests["600K"][0].to_atoms()
    assert_plain_pass_predicts_the_same(model, atoms)

    # rotation invariance
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ Rotation.random(random_state=3).as_matrix().T
    calculator = IncertaCalculator(model)
    sigma = calculator.get_property("forces_uncertainty", atoms)
    np.testing.assert_allclose(calculator.get_property("forces_uncertainty", rotated), sigma, rtol=1e-4, atol=1e-7)

    # a structure far outside training: scores above every in-distribution structure
    stretched = atoms.copy()
    stretched.positions *= 1.25
    far = calculator.get_property("structure_uncertainty", stretched)
    assert far > np.max(arrays["300K"]["structure_uncertainty"])


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")


@GPU
@pytest.mark.parametrize("method", POST_TRAINING)
def test_every_method_gives_the_same_numbers_on_the_gpu(method, fitted, tests):
    """float64 on CPU and on CUDA: energies, forces, stress-free uncertainties to 1e-6."""
    model = load_uncertain_potential(fitted(method)).double()
    graphs = graphs_for(model.potential, tests["600K"][:4])
    on_cpu = collect(model, graphs)
    on_gpu = collect(model.to("cuda"), [g.to("cuda") for g in graphs])
    for key in ("energy_pred", "forces_pred", "forces_uncertainty", "energy_uncertainty"):
        np.testing.assert_allclose(on_gpu[key], on_cpu[key], rtol=1e-6, atol=1e-9, err_msg=key)


@GPU
@pytest.mark.parametrize("method", ["gmm", "llpr"])
def test_a_fit_on_the_gpu_gives_the_cpu_fit(method, base_run, fitted, tests, tmp_path):
    """uq fit --device cuda: the same calibrated uncertainties (evaluated on the CPU) as the CPU fit."""
    run, splits = base_run
    model = tmp_path / "model"
    model.mkdir()
    (model / "potential.safetensors").write_bytes((run / "model" / "potential.safetensors").read_bytes())
    fit_uncertainty(model, method, splits.train, splits.validation, settings=FIT.model_copy(update={"device": "cuda"}))
    on_gpu, on_cpu = (collect(load_uncertain_potential(m), graphs_for(load_uncertain_potential(m).potential, tests["600K"][:8]))
                      for m in (model, fitted(method)))
    for key in ("forces_uncertainty", "energy_uncertainty"):
        np.testing.assert_allclose(on_gpu[key], on_cpu[key], rtol=1e-4, err_msg=key)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_fit_asked_on_a_missing_gpu_says_so(base_run, tmp_path):
    run, splits = base_run
    model = tmp_path / "model"
    model.mkdir()
    (model / "potential.safetensors").write_bytes((run / "model" / "potential.safetensors").read_bytes())
    with pytest.raises(DeviceError, match=r"the fit's device is 'cuda' but PyTorch sees no GPU here"):
        fit_uncertainty(model, "gmm", splits.train, splits.validation, settings=FIT.model_copy(update={"device": "cuda"}))
    assert not (model / "uncertainty.safetensors").exists()


def test_unseen_element_is_flagged_not_predicted(fitted):
    model = fitted("gmm")
    uncertain = load_uncertain_potential(model)
    frames = [Frame.from_atoms(molecule("CH3CH2OH")), Frame.from_atoms(molecule("CH3Cl"))]
    graph = collate([frame_to_graph(f, uncertain.potential.spec.cutoff).to(dtype=torch.float32) for f in frames])
    out = uncertain(graph)
    assert torch.isfinite(out["energy"][0]) and torch.isnan(out["energy"][1])
    assert torch.isinf(out["structure_uncertainty"][1]) and torch.isfinite(out["structure_uncertainty"][0])
    chlorine = int(np.flatnonzero(frames[1].numbers == 17)[0]) + len(frames[0])
    assert torch.isinf(out["forces_uncertainty"][chlorine])


def test_calibration_reduces_miscalibration_on_held_out(fitted, tests):
    model = fitted("llpr")
    uncertain = load_uncertain_potential(model)
    arrays = collect(uncertain, graphs_for(uncertain.potential, tests["300K"]))
    error = arrays["forces_pred"] - arrays["forces_ref"]
    raw = uq_metrics.miscalibration_area(*uq_metrics.force_components(error, arrays["atom_score"]))
    calibrated = uq_metrics.miscalibration_area(*uq_metrics.force_components(error, arrays["forces_uncertainty"]))
    assert calibrated < 0.5 * raw and calibrated < 0.15


def test_deep_ensemble(ensemble_model, tests, base_run):
    uncertain, _ = check_quality(ensemble_model, tests, base_run[1])
    assert len(uncertain.method.members) == 2
    members = uncertain.method.members
    assert not torch.equal(members[0].readout.hidden.weight, members[1].readout.hidden.weight), "members must differ"
    calculator = IncertaCalculator(ensemble_model)
    atoms = tests["300K"][0].to_atoms()
    assert_plain_pass_predicts_the_same(ensemble_model, atoms)
    atoms.calc = calculator
    assert atoms.get_potential_energy() == pytest.approx(
        np.mean([IncertaCalculator(m).get_potential_energy(atoms) for m in members]), abs=2e-3)  # float32 at 9 keV


def test_gp_prediction_cache_matches_gpytorch(fitted, tests):
    """The cached SVGP prediction of three structures: GPyTorch's mean, the diagonal of its
    covariance, and the sum of its covariance over each structure's atoms (the energy variance)."""
    uncertain = load_uncertain_potential(fitted("svgp"))
    method = uncertain.method
    batch = collate(graphs_for(uncertain.potential, tests["600K"][:3]))
    features = uncertain.potential(batch, compute_forces=False)["node_features"].detach().double()
    z = ((features - method.center) / method.spread).requires_grad_(True)
    mean, variance, structure_variance = method._fixed_posterior(z, batch.batch, batch.num_graphs)
    reference = method.gp(z)
    covariance = reference.lazy_covariance_matrix.to_dense()
    summation = torch.nn.functional.one_hot(batch.batch, batch.num_graphs).double().T
    torch.testing.assert_close(mean, reference.mean, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(variance, torch.diagonal(covariance), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(structure_variance, ((summation @ covariance) * summation).sum(1), rtol=1e-6, atol=1e-9)
    gradient = torch.autograd.grad(mean.sum(), z)[0]  # LNK's forces are derivatives of this mean
    torch.testing.assert_close(gradient, torch.autograd.grad(reference.mean.sum(), z)[0], rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        method.gp.covar_module.raw_outputscale.add_(0.5)  # a changed GP is not served from the cache
    method.gp.train().eval()  # GPyTorch's own caches are dropped on a mode change, ours are not
    torch.testing.assert_close(method._fixed_posterior(z, batch.batch, batch.num_graphs)[1],
                               torch.diagonal(method.gp(z).lazy_covariance_matrix.to_dense()), rtol=1e-6, atol=1e-9)


def test_calibration_frames_from_a_hotter_run_are_calibrated_on(fitted, base_run, acac, tmp_path):
    """Twenty labelled 600 K frames of another trajectory than the test set, added to the
    calibration data: the likelihood scale of each element then makes the mean of
    |dF|^2 / sigma^2 exactly 1 over validation + those frames (it does not without them)."""
    run, splits = base_run
    model = tmp_path / "model"
    model.mkdir()
    (model / "potential.safetensors").write_bytes((run / "model" / "potential.safetensors").read_bytes())
    hotter = {"path": str(acac / "train_600K.xyz"), "select": "::25"}
    settings = FitSettings(**{**FIT.model_dump(), "calibration_data": [hotter]})
    report = fit_uncertainty(model, "combined", splits.train, splits.validation, settings=settings)
    assert report["n_calibration_data"] == 20 and report["n_validation"] == len(splits.validation) + 20
    frames = [*splits.validation, *read_frames(acac / "train_600K.xyz")[::25]]

    def normalised_errors(folder) -> dict[int, float]:
        uncertain = load_uncertain_potential(folder)
        arrays = collect(uncertain, graphs_for(uncertain.potential, frames))
        ratio = np.sum((arrays["forces_pred"] - arrays["forces_ref"]) ** 2, axis=1) / arrays["forces_uncertainty"] ** 2
        return {int(z): float(ratio[arrays["numbers"] == z].mean()) for z in np.unique(arrays["numbers"])}

    anticipating, plain = normalised_errors(model), normalised_errors(fitted("combined"))
    assert all(v == pytest.approx(1.0, rel=1e-4) for v in anticipating.values()), anticipating
    assert max(abs(v - 1) for v in plain.values()) > 0.05, plain
