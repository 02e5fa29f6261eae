"""Molecular dynamics through ASE with the incerta calculator."""

from __future__ import annotations

import numpy as np
from ase import units
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from incerta.calculators.ase import IncertaCalculator


def test_nve_conserves_energy(model, ethanol):
    ethanol.calc = IncertaCalculator(model)
    thermalize_momenta(ethanol, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(ethanol)
    dynamics = VelocityVerlet(ethanol, 0.25 * units.fs)
    potential, total = [], []
    for _ in range(200):
        dynamics.run(1)
        potential.append(ethanol.get_potential_energy())
        total.append(ethanol.get_total_energy())
    potential, total = np.array(potential), np.array(total)
    assert np.ptp(potential) > 0.02, "the system must actually move on the surface"
    assert np.ptp(total) < 1e-3 * np.ptp(potential), f"total energy drifts by {np.ptp(total):.2e} eV"
