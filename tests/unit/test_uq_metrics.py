"""Uncertainty metrics and calibration on hand-made inputs with known answers."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from incerta.uq import calibration
from incerta.uq import metrics as m
from incerta.uq.calibration import Calibration, ScoreMap


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_spearman_and_auroc_extremes():
    x = np.arange(10.0)
    assert m.spearman(x, x**2) == pytest.approx(1.0)
    assert m.spearman(x, -x) == pytest.approx(1.0), "error magnitudes are ranked, sign ignored"
    assert m.spearman(x, 10 - x) == pytest.approx(-1.0)
    assert m.auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert m.auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert m.auroc(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.5


def test_gaussian_nll_known_value():
    assert m.gaussian_nll(np.zeros(4), np.ones(4)) == pytest.approx(0.5 * np.log(2 * np.pi))
    assert m.gaussian_nll(np.full(3, 2.0), np.full(3, 2.0)) == pytest.approx(0.5 * np.log(8 * np.pi) + 0.5)


def test_calibrated_gaussian_errors_have_small_miscalibration(rng):
    sigma = rng.uniform(0.05, 0.5, 20000)
    errors = rng.normal(size=sigma.size) * sigma
    assert m.miscalibration_area(errors, sigma) < 0.01
    assert m.ence(errors, sigma) < 0.05
    rmv, rmse = m.rmse_vs_rmv(errors, sigma)
    np.testing.assert_allclose(rmse, rmv, rtol=0.1)


def test_miscalibration_of_overconfident_and_underconfident(rng):
    sigma = np.full(20000, 0.1)
    errors = rng.normal(size=sigma.size) * sigma
    assert m.miscalibration_area(errors, 10 * sigma) > 0.35, "10x too wide: almost everything inside every interval"
    assert m.miscalibration_area(errors, 0.1 * sigma) > 0.35
    assert m.ence(errors, 2 * sigma) == pytest.approx(0.5, abs=0.03)


def test_force_components_share_the_atom_sigma():
    errors, sigmas = m.force_components(np.ones((2, 3)), np.array([np.sqrt(3.0), 2 * np.sqrt(3.0)]))
    np.testing.assert_allclose(sigmas, [1, 1, 1, 2, 2, 2])
    assert errors.shape == (6,)


def synthetic_forces(rng, sigma):
    """Force errors (N, 3) whose vector RMS is sigma (N,)."""
    return rng.normal(size=(sigma.size, 3)) * (sigma / np.sqrt(3))[:, None]


def test_scale_calibration_recovers_the_factor(rng):
    score = rng.uniform(0.01, 0.1, 5000)
    forces = synthetic_forces(rng, 2.0 * score)
    energy_score = rng.uniform(0.1, 1.0, 2000)
    energy_errors = rng.normal(size=2000) * 0.5 * energy_score
    calibration = Calibration.fit(score, forces, energy_score, energy_errors, "std")
    assert calibration.forces.kind == "scale"
    assert np.exp(calibration.forces.c0) == pytest.approx(2.0, rel=0.05)
    assert np.exp(calibration.energy.c0) == pytest.approx(0.5, rel=0.05)


def test_power_calibration_of_log_density_scores(rng):
    nll = rng.uniform(-20, 80, 8000)
    true_sigma = 0.02 * np.log1p(np.exp(nll - nll.min())) ** 0.5  # ~ Mahalanobis distance
    forces = synthetic_forces(rng, true_sigma)
    calibration = Calibration.fit(nll, forces, nll[:2000], rng.normal(size=2000) * true_sigma[:2000], "log-density")
    assert calibration.forces.kind == "power"
    assert calibration.forces.c1 == pytest.approx(0.5, abs=0.03)
    assert np.exp(calibration.forces.c0) == pytest.approx(0.02, rel=0.1)
    far = calibration.forces(np.array([1e4]))[0]
    assert far < 10 * calibration.forces(np.array([80.0]))[0] * np.sqrt(1e4 / 100), "polynomial, not exponential"


def test_log_density_map_grows_at_least_like_the_distance(rng, monkeypatch):
    """Validation atoms near the data (latent distance 1-2.5) whose density score is noisy:
    a free power fit comes out flatter than sigma ~ distance (regression dilution) and
    under-estimates the error of far atoms (distance 5-8); the bounded exponent keeps the
    near group calibrated and brings the far group's sigma closer to its error."""

    def atoms(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
        distance = rng.uniform(low, high, 4000)
        return 5 * distance**2 + rng.normal(scale=15, size=distance.size), synthetic_forces(rng, 0.02 * distance)

    (near, near_forces), (far, far_forces) = atoms(1, 2.5), atoms(5, 8)
    rms = lambda values: float(np.sqrt(np.mean(np.square(values))))

    def ratios() -> tuple[float, float, float]:
        forces = Calibration.fit(near, near_forces, near[:100], rng.normal(size=100), "log-density").forces
        error = lambda vectors: rms(np.linalg.norm(vectors, axis=1))
        return forces.c1, rms(forces(near)) / error(near_forces), rms(forces(far)) / error(far_forces)

    c1, near_ratio, far_ratio = ratios()
    monkeypatch.setattr(calibration, "MIN_DISTANCE_EXPONENT", 0.0)
    free_c1, _, free_far_ratio = ratios()
    assert free_c1 < 0.4 and c1 == pytest.approx(0.5, abs=1e-6)
    assert near_ratio == pytest.approx(1.0, abs=0.1)
    assert far_ratio > 1.3 * free_far_ratio and far_ratio < 1.0


def test_calibration_reduces_miscalibration_on_held_out_data(rng):
    score = rng.uniform(0.1, 1.0, 10000)
    forces = synthetic_forces(rng, 0.05 * score**1.5)
    fit, held = slice(0, 5000), slice(5000, None)
    before = m.miscalibration_area(*m.force_components(forces[held], score[held]))
    for kind in ("scale", "power", "isotonic"):
        calibration = Calibration.fit(score[fit], forces[fit], score[fit], np.ones(5000) * 0.1, "std", kind)
        after = m.miscalibration_area(*m.force_components(forces[held], calibration.forces(score[held])))
        assert after < 0.5 * before and after < 0.05, kind


def test_calibration_json_roundtrip_and_torch_path(rng):
    score = rng.uniform(0.1, 1.0, 3000)
    forces = synthetic_forces(rng, 0.05 * score)
    for kind in ("power", "isotonic"):
        calibration = Calibration.fit(score, forces, score, rng.normal(size=3000) * 0.05 * score, "std", kind)
        again = Calibration.from_json(calibration.to_json())
        np.testing.assert_allclose(again.forces(score), calibration.forces(score))
        as_torch = again.forces(torch.as_tensor(score)).numpy()
        np.testing.assert_allclose(as_torch, calibration.forces(score), rtol=1e-10)


def test_per_element_force_maps_undo_an_inverted_species_order(rng):
    """Hydrogen gets the larger raw score but the smaller errors: one map ranks atoms wrongly,
    per-element maps recover each element's factor; rare elements fall back to the global map."""
    numbers = np.repeat([1, 6, 8], [3000, 3000, 20])
    score = rng.uniform(0.5, 1.0, numbers.size) * np.where(numbers == 1, 2.0, 1.0)
    factor = np.select([numbers == 1, numbers == 6], [0.01, 0.2], 0.1)
    forces = synthetic_forces(rng, factor * score)
    error = np.linalg.norm(forces, axis=1)
    calibration = Calibration.fit(score, forces, score[:100], rng.normal(size=100), "std", numbers=numbers)
    assert sorted(calibration.forces_by_species) == [1, 6], "too few oxygen atoms for a map of their own"
    assert np.exp(calibration.forces_by_species[1].c0) == pytest.approx(0.01, rel=0.05)
    assert np.exp(calibration.forces_by_species[6].c0) == pytest.approx(0.2, rel=0.05)
    sigma = calibration.atom_sigma(torch.as_tensor(score), torch.as_tensor(numbers)).numpy()
    np.testing.assert_allclose(sigma[numbers == 8], calibration.forces(score[numbers == 8]))
    assert m.spearman(score, error) < 0 < m.spearman(sigma, error)
    again = Calibration.from_json(calibration.to_json())
    np.testing.assert_allclose(again.atom_sigma(torch.as_tensor(score), torch.as_tensor(numbers)).numpy(), sigma)


@pytest.mark.parametrize(("kind", "score_kind"), [("scale", "std"), ("power", "log-density"), ("conformal", "std"),
                                                  ("conformal", "log-density"), ("isotonic", "log-density")])
def test_atom_sigma_applies_each_atoms_element_map(rng, kind, score_kind):
    """Whatever the map kind, every atom gets its element's own map (numpy, one element at a
    time) and elements without a map (oxygen: too few atoms; nitrogen: never seen) the global one."""
    numbers = np.repeat([1, 6, 8], [400, 300, 10])
    score = rng.gamma(2.0, size=numbers.size) + (8.0 if score_kind == "log-density" else 0.0)
    forces = synthetic_forces(rng, np.where(numbers == 1, 0.02, 0.1) * np.sqrt(score))
    calibration = Calibration.fit(score, forces, score[:60], rng.normal(size=60), score_kind, kind, numbers)
    assert sorted(calibration.forces_by_species) == [1, 6]
    numbers[:5] = 7
    expected = np.array([calibration.forces_by_species.get(int(z), calibration.forces)(score[i : i + 1])[0]
                         for i, z in enumerate(numbers)])
    sigma = calibration.atom_sigma(torch.as_tensor(score), torch.as_tensor(numbers)).numpy()
    np.testing.assert_allclose(sigma, expected, rtol=1e-12)


def stress_case(rng, normal: float, shear: float, structures: int = 400, atoms: int = 8):
    """Structures of ``atoms`` atoms (scale-calibrated forces, sigma_i = 2 score_i) whose normal
    and shear stress components err with standard deviations ``normal`` and ``shear`` times
    sqrt(sum sigma_i^2) / V^(2/3): (calibration, per-atom sigma, structure index, volumes, the
    expected per-component sigma (B,) of each kind, stress errors (B, 3, 3))."""
    score = rng.uniform(0.05, 0.5, structures * atoms)
    calibration = Calibration.fit(score, synthetic_forces(rng, 2.0 * score), score[:structures],
                                  rng.normal(size=structures), "std")
    structure = np.repeat(np.arange(structures), atoms)
    volume = rng.uniform(100.0, 400.0, structures)
    base = np.sqrt(np.bincount(structure, (2.0 * score) ** 2)) / volume ** (2 / 3)
    upper = np.triu(rng.normal(size=(structures, 3, 3)) * np.where(np.eye(3), normal, shear)) * base[:, None, None]
    errors = upper + np.triu(upper, 1).transpose(0, 2, 1)  # symmetric
    calibration.fit_stress(score, np.full(structures * atoms, 29), structure, volume, errors)
    return calibration, 2.0 * score, structure, volume, normal * base, shear * base, errors


def test_stress_maps_recover_the_normal_and_shear_errors(rng):
    """Normal components err three times more than shear ones: each kind's map gives its own
    spread back (per component, Voigt order), and survives JSON."""
    calibration, sigma_atoms, structure, volume, normal, shear, _ = stress_case(rng, 0.6, 0.2)
    again = Calibration.from_json(calibration.to_json())
    predicted = again.stress_sigma(torch.as_tensor(sigma_atoms), torch.as_tensor(structure),
                                   torch.as_tensor(volume)).numpy()
    assert predicted.shape == (len(volume), 6)
    assert again.stress.normal.c1 == pytest.approx(1.0, abs=0.1) and again.stress.shear.c1 == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(predicted[:, :3], np.repeat(normal[:, None], 3, axis=1), rtol=0.15)
    np.testing.assert_allclose(predicted[:, 3:], np.repeat(shear[:, None], 3, axis=1), rtol=0.15)


def test_components_fixed_by_symmetry_are_left_out_of_the_stress_fit(rng):
    """Half the cells are symmetric, their shear errors exact zeros: told which components are
    fixed, the shear map gives the spread of the free ones back; fitted on all six, it comes out
    about sqrt(2) too small. A validation set without any free shear component gives the shear
    components the normal map."""
    calibration, sigma_atoms, structure, volume, normal, shear, errors = stress_case(rng, 0.6, 0.2)
    score, numbers = sigma_atoms / 2.0, np.full(sigma_atoms.size, 29)
    free = np.ones((len(volume), 6), dtype=bool)
    free[::2, 3:] = False
    errors[::2] *= np.eye(3)  # symmetric cells: exact zeros off the diagonal
    sigma = lambda: calibration.stress_sigma(torch.as_tensor(sigma_atoms), torch.as_tensor(structure),
                                             torch.as_tensor(volume)).numpy()
    calibration.fit_stress(score, numbers, structure, volume, errors, free=free)
    np.testing.assert_allclose(sigma()[:, 3], shear, rtol=0.15)
    np.testing.assert_allclose(sigma()[:, 0], normal, rtol=0.15)
    calibration.fit_stress(score, numbers, structure, volume, errors)
    assert np.median(sigma()[:, 3] / shear) == pytest.approx(np.sqrt(0.5), rel=0.1)
    free[:, 3:] = False
    calibration.fit_stress(score, numbers, structure, volume, errors, free=free)
    assert calibration.stress.shear == calibration.stress.normal


def test_stress_maps_read_the_methods_own_score_where_it_gives_one(rng):
    """Stress errors that follow a method's own stress score (the spread of its members), not the
    force uncertainties: the maps fitted on that score give the spread back, the calibration says
    which score it reads, and asking for sigma without that score is an error."""
    calibration, sigma_atoms, structure, volume, *_ = stress_case(rng, 0.3, 0.3)
    own = rng.uniform(1e-4, 1e-2, len(volume))  # eV/Å^3
    upper = np.triu(rng.normal(size=(len(volume), 3, 3))) * own[:, None, None] * np.where(np.eye(3), 1.0, 0.5)
    errors = upper + np.triu(upper, 1).transpose(0, 2, 1)
    calibration.fit_stress(sigma_atoms, np.full(sigma_atoms.size, 29), structure, volume, errors, method_scores=own)
    again = Calibration.from_json(calibration.to_json())
    assert again.stress.score == "method"
    predicted = again.stress_sigma(torch.as_tensor(sigma_atoms), torch.as_tensor(structure), torch.as_tensor(volume),
                                   torch.as_tensor(own)).numpy()
    np.testing.assert_allclose(predicted[:, 0], own, rtol=0.15)
    np.testing.assert_allclose(predicted[:, 3], 0.5 * own, rtol=0.15)
    with pytest.raises(ValueError, match="reads the method's own stress score"):
        again.stress_sigma(torch.as_tensor(sigma_atoms), torch.as_tensor(structure), torch.as_tensor(volume))
    data = json.loads(calibration.to_json())
    del data["stress"]["score"]  # a file written before method scores
    assert Calibration.from_json(json.dumps(data)).stress.score == "forces"


def test_a_stress_map_of_six_components_still_loads(rng):
    """A calibration file written with one map for all six components (RMS over six) gives the
    same per-component sigma for normal and shear components."""
    calibration = stress_case(rng, 0.3, 0.3)[0]
    score = torch.as_tensor(np.array([0.02, 0.05, 0.2]))
    for six in (ScoreMap("power", "std", c0=-1.3, c1=0.9),
                ScoreMap("isotonic", "std", knots_x=[0.01, 0.1], knots_y=[4e-6, 9e-6])):
        data = json.loads(calibration.to_json())
        data["stress"] = asdict(six)
        old = Calibration.from_json(json.dumps(data))
        expected = six(score).numpy() / np.sqrt(6.0)
        np.testing.assert_allclose(old.stress(score).numpy(), np.repeat(expected[:, None], 6, axis=1), rtol=1e-12)


def test_no_stress_map_without_enough_periodic_structures(rng):
    score = rng.uniform(0.1, 1.0, 80)
    calibration = Calibration.fit(score, synthetic_forces(rng, score), score[:10], rng.normal(size=10), "std")
    errors = np.full((10, 3, 3), np.nan)
    errors[:3] = 0.01
    calibration.fit_stress(score, np.full(80, 29), np.repeat(np.arange(10), 8), np.full(10, 100.0), errors)
    assert calibration.stress is None
    assert Calibration.from_json(calibration.to_json()).stress is None


def test_conformal_calibration_covers_heavy_tailed_errors(rng):
    """Multivariate-t force errors (3 degrees of freedom) scaled by the score: the conformal map
    holds its coverage on held-out atoms; on Gaussian errors it agrees with the likelihood scale."""
    from scipy.stats import chi2

    from incerta.uq.calibration import CONFORMAL_LEVEL

    score = rng.uniform(0.05, 0.5, 20000)
    heavy = synthetic_forces(rng, score) * np.sqrt(3 / rng.chisquare(3, size=20000))[:, None]
    fit, held = slice(0, 10000), slice(10000, None)
    radius = np.sqrt(chi2.ppf(CONFORMAL_LEVEL, 3) / 3)
    calibration = Calibration.fit(score[fit], heavy[fit], score[fit], rng.normal(size=10000), "std", "conformal")
    covered = np.linalg.norm(heavy[held], axis=1) <= radius * calibration.forces(score[held])
    assert covered.mean() == pytest.approx(CONFORMAL_LEVEL, abs=0.01)
    gaussian = synthetic_forces(rng, 2.0 * score)
    factors = [np.exp(Calibration.fit(score, gaussian, score, rng.normal(size=20000), "std", kind).forces.c0)
               for kind in ("conformal", "scale")]
    assert factors[0] == pytest.approx(factors[1], rel=0.03) and factors[1] == pytest.approx(2.0, rel=0.03)


def test_spearman_ceiling_is_what_exact_sigmas_reach(rng):
    """Errors drawn from the sigmas: the measured per-structure Spearman lands on the ceiling,
    which is below 1 (the worst atom's error is noisy); scores unrelated to the sigmas have none."""
    structures, atoms = 300, 10
    structure = np.repeat(np.arange(structures), atoms)
    sigma = np.exp(rng.uniform(-2.0, 0.0, structures))[structure] * rng.uniform(0.5, 1.5, structure.size)
    errors = rng.normal(size=(structure.size, 3)) * (sigma / np.sqrt(3.0))[:, None]
    score = m.per_structure_max(sigma, structure, structures)
    worst = m.per_structure_max(np.linalg.norm(errors, axis=1), structure, structures)
    ceiling = m.spearman_if_calibrated(sigma, structure, score)
    assert 0.6 < ceiling < 0.99
    assert m.spearman(score, worst) == pytest.approx(ceiling, abs=0.06)
    assert abs(m.spearman_if_calibrated(sigma, structure, rng.permutation(score))) < 0.15
