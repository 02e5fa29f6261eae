"""Periodic materials: cost of charge equilibration with the cell size.

Section ``qeq``: rattled rock-salt NaCl supercells from 64 to 5,832 atoms, random
electronegativities, hardnesses and Gaussian widths (a trained model's range), total
charge +1 e. For each size: median wall time of the charges and electrostatic energy
(conjugate gradients with the particle-mesh Ewald operator), of the same plus forces
(backward through the iterations), and the iterations used; 2 threads, float64. The
growth exponent is the log-log slope between the smallest and largest cell (target <= 1.5).

    .venv/bin/python benchmarks/materials.py --section qeq
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from ase.build import bulk
from common import RESULTS, print_table, write_results

from incerta.nn import solvers
from incerta.nn.electrostatics import equilibrate_cell
from incerta.nn.periodic_coulomb import PeriodicCoulomb

REPEATS = ((2, 2, 2), (3, 3, 3), (4, 4, 4), (5, 5, 5), (6, 6, 6), (8, 8, 8), (9, 9, 9))


def counted_iterations(coulomb: PeriodicCoulomb, hardness: torch.Tensor, chi: torch.Tensor, total: torch.Tensor) -> int:
    """Iterations the solver takes, counted through its operator calls (one per iteration, plus the start)."""
    calls = 0

    def apply(q: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return coulomb(q) + hardness * q

    solvers.constrained_conjugate_gradient(apply, -chi, total, coulomb.self_energy + hardness)
    return calls - 1


def qeq_cost(calls: int) -> list[dict]:
    rows = []
    for repeat in REPEATS:
        crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
        crystal.rattle(0.1, seed=1)
        n = len(crystal)
        rng = np.random.default_rng(0)
        cell = torch.as_tensor(crystal.cell.array)
        width = torch.as_tensor(rng.uniform(0.6, 1.2, n))
        hardness, chi = torch.as_tensor(rng.uniform(1.0, 3.0, n)), torch.as_tensor(rng.normal(size=n))
        total = torch.tensor(1.0, dtype=torch.float64)
        forward, with_forces = [], []
        for _ in range(calls):
            positions = torch.as_tensor(crystal.positions).requires_grad_(True)
            start = time.perf_counter()
            charges, energies = equilibrate_cell(positions, cell, width, hardness, chi, total)
            forward.append(time.perf_counter() - start)
            torch.autograd.grad(energies.sum(), positions)
            with_forces.append(time.perf_counter() - start)
        coulomb = PeriodicCoulomb(torch.as_tensor(crystal.positions), cell, width)
        iterations = counted_iterations(coulomb, hardness, chi, total)
        rows.append({"atoms": n, "charges_s": statistics.median(forward), "charges_and_forces_s": statistics.median(with_forces),
                     "iterations": iterations, "net_charge": float(charges.detach().sum())})
        print(f"{n} atoms: {rows[-1]['charges_s']:.3f} s, with forces {rows[-1]['charges_and_forces_s']:.3f} s, "
              f"{iterations} iterations", flush=True)
    return rows


def slope(rows: list[dict], key: str) -> float:
    first, last = rows[0], rows[-1]
    return float(np.log(last[key] / first[key]) / np.log(last["atoms"] / first["atoms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["qeq"], default="qeq")
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = qeq_cost(args.calls)
    print_table("charge equilibration in periodic NaCl (CG + PME, float64, 2 threads)",
                ["atoms", "charges s", "charges + forces s", "CG iterations"],
                [[r["atoms"], f"{r['charges_s']:.3f}", f"{r['charges_and_forces_s']:.3f}", r["iterations"]] for r in rows])
    growth = {"charges": slope(rows, "charges_s"), "charges_and_forces": slope(rows, "charges_and_forces_s")}
    print(f"growth exponent (log-log slope, {rows[0]['atoms']} -> {rows[-1]['atoms']} atoms): "
          f"charges N^{growth['charges']:.2f}, with forces N^{growth['charges_and_forces']:.2f} (target <= 1.5)")
    previous = RESULTS / "materials.json"
    sections = json.loads(previous.read_text()) if previous.is_file() else {}  # other sections stay
    sections.pop("machine", None)
    write_results("materials", {**sections, "qeq_cost": {"rows": rows, "growth_exponent": growth}})


if __name__ == "__main__":
    main()
