"""Periodic materials: accuracy on the mlearn elements, stress uncertainty, and the cost of
charge equilibration with the cell size.

Section ``mlearn`` (Zuo et al., J. Phys. Chem. A 124, 731 (2020); shared data
``mlearn_zuo2020``): each element with a training set is trained through the normal CLI
(``incerta train``, then ``incerta uq fit --method gmm``) under a fixed wall-time budget, two
elements at a time on one thread each, and tested on the element's test set: energy MAE
(meV/atom), force MAE (meV/Å), stress RMSE (GPa), and the stress uncertainty's Spearman
(per structure, against the RMS component error) and miscalibration area (all six
components, each with its own sigma; components a cell's symmetry fixes at zero have sigma 0,
are exact, and are counted apart). The published MAEs of GAP and MTP stand beside them
(``PUBLISHED``, with their source). Elements whose training file is absent from the shared
snapshot (Cu, Ni) are reported as such.

The shear stress labels are checked first. The mlearn files do not order the three shear
components the same way in every structure group: measured with energy-and-force models
(no stress in the loss; 2026-12-05 run), the Vacancy and AIMD-NVT cells of Ge, Mo and Si
give their yz and xz shear in each other's place (RMS shear error 0.13-0.35 GPa with the two
swapped, 0.47-1.85 as read), and so do Mo's Elastic cells (0.59 against 3.11); Ge's and
Si's Elastic cells and every Li cell are in VASP's order. The Surface cells carry too little
stress to judge that way, but their symmetry does: as read, 5, 2 and 5 of the Ge, Mo and Si
surface cells with a shear component fixed at zero by a mirror plane hold a nonzero value
exactly there, none with yz and xz swapped. So each element first gets a probe model trained
on energies and forces alone (``--probe-minutes``); per group, among the orders of the shear
components that break the symmetry of the fewest cells, the one the probe's stresses match
best replaces the order as read when it halves the RMS shear error or the order as read
breaks more symmetry (``incerta.evaluate.label_check``, what ``incerta data check`` runs);
the main model trains on the checked labels, written to the element's work folder, and the
test set is checked with the same orders. The check is in the JSON (``shear_label_check``).
The l_max 2 models of 2026-12-06 were trained before the symmetry part of the check
existed, so on the surface labels as read (3-5 % of the cells); their test cells are checked.

    .venv/bin/python benchmarks/materials.py --section mlearn --minutes 40 --probe-minutes 5

Section ``mlearn-shallow`` (after ``mlearn``): the same models, copied, with shallow-ensemble
heads fitted by ``incerta uq fit --method shallow``; their stress uncertainty reads the spread
of the heads' own stresses rather than the force uncertainties, and their mean (fitted to the
stress labels too) is the prediction. Both methods are measured on each element's current
model (the budget it had is in the JSON, ``stress_uncertainty_by_method``).

    .venv/bin/python benchmarks/materials.py --section mlearn-shallow

Section ``water``: the shared liquid-water frames (64 H2O, RPBE-D3; 40 to train, 10 held
out; they have no stress labels) trained the same way on two threads, held-out energy and
force RMSE, then NPT MD at 300 K and 1 bar through ``incerta md`` watched by the calibrated
uncertainty: flags, temperature, pressure and density.

    .venv/bin/python benchmarks/materials.py --section water --minutes 15 --md-steps 4000
    .venv/bin/python benchmarks/materials.py --section water --minutes 15 --dispersion rpbe   # D3 in the model

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
import csv
import json
import shutil
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ase.io
import numpy as np
import torch
import yaml
from ase import units
from ase.build import bulk
from common import INCERTA, RESULTS, WORK, print_table, run_timed, shared_data, write_results

from incerta.data.io import read_frames
from incerta.evaluate.label_check import checked_frames, model_stress, shear_order_check
from incerta.models.predict import graphs_for
from incerta.nn import solvers
from incerta.nn.electrostatics import equilibrate_cell
from incerta.nn.periodic_coulomb import PeriodicCoulomb
from incerta.train.checkpoint import load_potential
from incerta.uq import metrics as uq_metrics
from incerta.uq.calibration import voigt_components
from incerta.uq.fit import run_splits
from incerta.uq.predict import collect
from incerta.uq.store import load_uncertain_potential

ELEMENTS = ("Cu", "Ge", "Li", "Mo", "Ni", "Si")
#: Zuo et al. 2020 test-set MAEs {element: {potential: (energy meV/atom, force meV/Å)}}, as transcribed by the
#: ACE authors in ACEsuit/ACEworkflows, Zuo2020Benchmark/ACEpotentials_paper.jl (forces given there in eV/Å to two
#: decimals, so +-5 meV/Å); NNP, SNAP and qSNAP were not found in a readable source and are left out
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "Ni": {"GAP": (0.42, 20.0), "MTP": (0.48, 10.0)},
    "Cu": {"GAP": (0.46, 10.0), "MTP": (0.41, 10.0)},
    "Li": {"GAP": (0.49, 10.0), "MTP": (0.49, 10.0)},
    "Mo": {"GAP": (2.24, 90.0), "MTP": (2.83, 90.0)},
    "Si": {"GAP": (2.91, 70.0), "MTP": (2.21, 60.0)},
    "Ge": {"GAP": (2.06, 50.0), "MTP": (1.79, 50.0)},
}
PUBLISHED_SOURCE = ("Zuo et al., J. Phys. Chem. A 124, 731 (2020), test-set MAEs of GAP and MTP as transcribed in "
                    "github.com/ACEsuit/ACEworkflows Zuo2020Benchmark/ACEpotentials_paper.jl (forces +-5 meV/Å)")
MODEL = {"cutoff": 5.0, "l_max": 1, "num_channels": 32, "num_layers": 3}
#: the mlearn elements' model: l_max 2 (the accurate preset) learns more per minute of training
#: than l_max 1 although each epoch costs ~3x as much. Si, energies and forces, 10 minutes on one
#: thread (2026-12-06): test force MAE 97 meV/Å at l_max 1, 73 at l_max 2 (74 with batches of
#: 2 instead of 4); l_max 3 takes ~130 s per epoch against ~45. The probe keeps MODEL.
#: Other choices measured against it (2026-12-07; energies and forces, no stress, 15 minutes on
#: one thread, two runs at a time; test force MAE in meV/Å, Li / Mo): this model 14.8 / 112;
#: cutoff 4.5 Å (Li) or 4.0 Å (Mo), which drops the third neighbour shell the cutoff envelope
#: nearly silences and leaves 0.7 / 0.5 of the edges, 19.7 / 124 despite 1.4x / 1.9x the epochs;
#: cutoff 6 Å (Mo) 145; 64 channels (Mo) 127; a Huber loss on the forces (delta 0.01 eV/Å, a
#: trial option not kept) 15.7 / 115; learning rate 0.02 or 0.005 instead of 0.01 (Mo) 110 / 113.
#: Training errors are as large as test errors (Mo: 108 against 112): the models underfit. A
#: step's time is mostly the tensor products' operators (torch.profiler, a Mo batch: elementwise
#: mul 27 %, bmm 24 %, mm 10 %). A longer budget helps Li, hardly Mo: 13.1 -> 11.8 and
#: 106 -> 104 from 40 to 80 minutes (``mlearn_longer_budget``).
MLEARN_MODEL = {**MODEL, "l_max": 2}
#: loss weights of the per-atom energy and the forces. The mlearn cells weigh them equally (as
#: NequIP does): against 0.05 / 0.95 (run of 2026-12-05), the run of 2026-12-06 gave energy MAEs
#: (Ge, Li, Mo, Si) of 7.7 / 1.8 / 7.7 / 5.7 instead of 12.4 / 4.2 / 14.8 / 18.1 meV/atom, at
#: force MAEs of 72 / 21 / 116 / 86 instead of 69 / 21 / 116 / 88 meV/Å.
MLEARN_WEIGHTS = {"energy_weight": 1.0, "forces_weight": 1.0}
WATER_WEIGHTS = {"energy_weight": 0.05, "forces_weight": 0.95}


#: the elements' in-process model work (the label check), one at a time: loading a model traces
#: e3nn's code with torch.fx, whose tracing patches every module call in the process
IN_PROCESS = threading.Lock()


def train_with_cli(folder: Path, data: dict, minutes: float, weights: dict[str, float], threads: int,
                   model: dict | None = None) -> dict:
    """``incerta train`` then ``incerta uq fit --method gmm`` on ``threads`` threads; the training's
    own time (summed over resumes, so a finished run rerun keeps it) and the fit's wall time, in s.
    ``weights``: the loss weights (energy_weight, forces_weight, stress_weight);
    ``model``: options beside :data:`MODEL`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "seed": 0,
        "data": data,
        "model": {**MODEL, **(model or {})},
        "training": {"epochs": 100000, "max_time_minutes": minutes, "lr": 0.01, "batch_size": 4,
                     "scheduler_patience": 10, "progress": False, **weights},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    run_timed([INCERTA, "train", folder / "config.yaml", "--run-dir", folder / "run"], folder / "train.log", env=env)
    train_s = json.loads((folder / "run" / "metrics.json").read_text())["train_time_s"]
    fit_s = run_timed([INCERTA, "uq", "fit", folder / "run" / "model", "--method", "gmm"], folder / "uq.log", env=env)
    return {"train_s": train_s, "uq_fit_s": fit_s, "model": folder / "run" / "model"}


def train_element(element: str, data: Path, minutes: float, probe_minutes: float, work: Path) -> dict:
    """One mlearn element: a probe on energies and forces, the shear label check, then the
    model with its stresses on the checked labels; 20 training cells held out for validation
    and calibration. Returns wall times, the model folder, the check and the checked test path."""
    folder = work / element
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"train": data / element / "training.json", "test": data / element / "test.json"}
    probe = train_with_cli(folder / "probe", {"train": {"path": str(paths["train"]), "format": "mlearn"}, "n_val": 20},
                           probe_minutes, MLEARN_WEIGHTS, threads=1)
    train = read_frames(paths["train"], format="mlearn")
    with IN_PROCESS:
        check = shear_order_check(model_stress(load_potential(probe["model"]), train), train)
    for name, frames in (("train", train), ("test", read_frames(paths["test"], format="mlearn"))):
        ase.io.write(folder / f"{name}.xyz", [f.to_atoms() for f in checked_frames(frames, check)], format="extxyz")
    trained = train_with_cli(folder / "main", {"train": str(folder / "train.xyz"), "n_val": 20}, minutes,
                             {**MLEARN_WEIGHTS, "stress_weight": 100.0}, threads=1, model=MLEARN_MODEL)
    return {**trained, "probe_train_s": probe["train_s"], "shear_label_check": check, "test": folder / "test.xyz"}


def evaluate_element(model: Path, test: Path) -> dict:
    """Test-set errors of the model and its stress uncertainty (``test``: checked labels)."""
    uncertain = load_uncertain_potential(model)
    frames = read_frames(test)
    arrays = collect(uncertain, graphs_for(uncertain.potential, frames))
    energy = np.abs(arrays["energy_pred"] - arrays["energy_ref"]) / arrays["n_atoms"]
    forces = np.abs(arrays["forces_pred"] - arrays["forces_ref"])
    result = {"test_structures": len(frames), "energy_mae_meV_per_atom": 1e3 * float(energy.mean()),
              "forces_mae_meV_per_A": 1e3 * float(forces.mean())}
    if "stress_ref" in arrays:
        errors = arrays["stress_pred"] - arrays["stress_ref"]
        known = np.isfinite(errors).all(axis=(1, 2))
        components = voigt_components(errors[known])
        result["stress_rmse_GPa"] = float(np.sqrt(np.mean(components**2)) / units.GPa)
        if "stress_uncertainty" in arrays:
            sigma = arrays["stress_uncertainty"][known]
            free = sigma > 0  # zero: fixed by the cell's symmetry, exactly known
            area = lambda part: uq_metrics.miscalibration_area(components[:, part][free[:, part]], sigma[:, part][free[:, part]])
            result["stress_uncertainty"] = {
                "spearman": uq_metrics.spearman(np.sqrt(np.mean(sigma**2, axis=1)), np.sqrt(np.mean(components**2, axis=1))),
                "miscalibration_area": area(slice(0, 6)),
                "miscalibration_area_normal": area(slice(0, 3)),
                "miscalibration_area_shear": area(slice(3, 6)),
                "mean_sigma_over_rms_error": float(np.sqrt(np.mean(sigma[free]**2)) / np.sqrt(np.mean(components[free]**2))),
                "symmetry_fixed_components": int((~free).sum()),
                "largest_error_of_a_fixed_component_GPa": float(np.abs(components[~free]).max(initial=0.0) / units.GPa),
            }
    return result


def mlearn(minutes: float, probe_minutes: float, elements: Sequence[str], previous: dict) -> dict:
    """Train (or resume, a longer ``minutes`` extending the budget) and test ``elements``; the
    other elements keep their entries of ``previous`` (the last results)."""
    data = shared_data() / "mlearn_zuo2020" / "data"
    work = WORK / "materials"
    trainable = [e for e in ELEMENTS if e in elements and (data / e / "training.json").is_file()]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two trainings at a time, one thread each
        trained = dict(zip(trainable, pool.map(lambda e: train_element(e, data, minutes, probe_minutes, work), trainable)))
    results = {}
    for element in ELEMENTS:
        if element not in elements and element in previous:
            results[element] = previous[element]
            continue
        entry: dict = {"published": {k: {"energy_mae_meV_per_atom": v[0], "forces_mae_meV_per_A": v[1]}
                                     for k, v in PUBLISHED.get(element, {}).items()}}
        if element in trained:
            entry.update(evaluate_element(trained[element]["model"], trained[element]["test"]))
            entry.update({k: v for k, v in trained[element].items() if k not in ("model", "test")})
        else:
            entry["note"] = "no training set in the shared snapshot (training.json absent upstream)"
        results[element] = entry
    return results


def mlearn_shallow() -> dict:
    """The stress uncertainty of shallow-ensemble heads, which read the spread of their own
    stresses: each element's model of the last ``mlearn`` run is copied with its run folder (the
    GMM stays), given heads by ``incerta uq fit --method shallow`` (two elements at a time, one
    thread each) and tested on the same checked test set beside the model with its GMM (so
    both methods are measured on the same weights, whatever budget the last run had)."""
    work = WORK / "materials"
    trained = [e for e in ELEMENTS if (work / e / "main" / "run" / "model").is_dir()]

    def fit(element: str) -> dict:
        run, copy = work / element / "main" / "run", work / element / "shallow" / "run"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
        fit_s = run_timed([INCERTA, "uq", "fit", copy / "model", "--method", "shallow"], copy.parent / "uq.log",
                          env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        test = work / element / "test.xyz"
        return {"uq_fit_s": fit_s, "max_time_minutes": yaml.safe_load((run / "config.yaml").read_text())["training"]["max_time_minutes"],
                "shallow": evaluate_element(copy / "model", test), "gmm": evaluate_element(run / "model", test)}

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(trained, pool.map(fit, trained)))


def water(minutes: float, md_steps: int, dispersion: str | None = None) -> dict:
    """Liquid water (64 H2O, RPBE-D3, no stress labels): 40 frames to train, 10 held out; then
    NPT MD at 300 K and 1 bar through ``incerta md`` from a held-out frame, watched with a
    threshold 1.5x the largest structure uncertainty of the held-out frames. ``dispersion``:
    the model adds that functional's D3(BJ) two-body term (the network learns the rest)."""
    folder = WORK / "materials" / ("water" if dispersion is None else f"water-d3-{dispersion}")
    path = shared_data() / "water_rpbe_d3" / "test-H2O_RPBE-D3.xyz"
    model = None if dispersion is None else {"dispersion": dispersion, "dispersion_three_body": False}
    trained = train_with_cli(folder, {"train": str(path), "n_val": 10}, minutes, WATER_WEIGHTS, threads=2,
                             model=model)
    model = trained["model"]
    held_out = run_splits(model).validation
    uncertain = load_uncertain_potential(model)
    arrays = collect(uncertain, graphs_for(uncertain.potential, held_out))
    energy = (arrays["energy_pred"] - arrays["energy_ref"]) / arrays["n_atoms"]
    forces = arrays["forces_pred"] - arrays["forces_ref"]
    threshold = 1.5 * float(arrays["structure_uncertainty"].max())
    held_out[0].to_atoms().write(folder / "start.xyz")
    md_s = run_timed([INCERTA, "md", model, folder / "start.xyz", "--ensemble", "npt", "--temperature", "300",
                      "--pressure", "0.0001", "--steps", md_steps, "--timestep", "0.5", "--check-every", "20",
                      "--max-uncertainty", threshold, "--on-flag", "stop", "--trajectory", folder / "md" / "trajectory.xyz",
                      "--write-every", "200", "--out", folder / "md"], folder / "md.log", env={"OMP_NUM_THREADS": "2"})
    with open(folder / "md" / "log.csv") as handle:
        log = list(csv.DictReader(handle))
    column = lambda name: np.array([float(row[name]) for row in log])
    flags = [row["event"] for row in log if row["event"]]
    return {
        "held_out_frames": len(held_out), "energy_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(energy**2))),
        "forces_rmse_meV_per_A": 1e3 * float(np.sqrt(np.mean(forces**2))), "stress": "no stress labels in the shared set",
        "train_s": trained["train_s"], "uq_fit_s": trained["uq_fit_s"],
        "npt_md": {"steps": int(column("step")[-1]), "time_ps": float(column("time_fs")[-1]) / 1e3, "wall_s": md_s,
                   "threshold_eV_per_A": threshold, "flags": flags,
                   "max_force_uncertainty_eV_per_A": float(column("max_force_uncertainty_eV_per_A").max()),
                   "mean_temperature_K": float(column("temperature_K")[len(log) // 2:].mean()),
                   "mean_pressure_GPa": float(column("pressure_GPa")[len(log) // 2:].mean()),
                   "density_g_per_cm3_start_end": [density(folder / "start.xyz", column("volume_A3")[0]),
                                                   density(folder / "start.xyz", column("volume_A3")[-1])]},
    }


def density(structure: Path, volume_A3: float) -> float:
    """Mass density (g/cm^3) of the atoms in ``structure`` in ``volume_A3``."""
    masses = ase.io.read(structure).get_masses().sum()
    return float(masses / units.mol / (volume_A3 * 1e-24))


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


def print_mlearn(results: dict) -> None:
    potentials = sorted({p for entry in results.values() for p in entry["published"]})
    rows = []
    for element, entry in results.items():
        published = [f"{entry['published'][p]['forces_mae_meV_per_A']:.0f}" if p in entry["published"] else "-"
                     for p in potentials]
        stress = entry.get("stress_uncertainty", {})
        rows.append([element, f"{entry.get('energy_mae_meV_per_atom', float('nan')):.1f}",
                     f"{entry.get('forces_mae_meV_per_A', float('nan')):.0f}", *published,
                     f"{entry.get('stress_rmse_GPa', float('nan')):.2f}", f"{stress.get('spearman', float('nan')):.2f}",
                     f"{stress.get('miscalibration_area', float('nan')):.3f}", f"{entry.get('train_s', 0) / 60:.0f}"])
    print_table("mlearn test sets: incerta (E MAE meV/atom, F MAE meV/Å) beside published force MAEs (meV/Å)",
                ["element", "E MAE", "F MAE", *[f"F {p}" for p in potentials], "stress RMSE GPa", "stress-sigma Spearman",
                 "stress miscal. area", "train min"], rows)
    checks = [[element, group, entry["structures"], f"{entry['rms_error_GPa']['yz,xz,xy']:.2f}",
               f"{min(entry['rms_error_GPa'].values()):.2f}",
               f"{entry['symmetry_violations']['yz,xz,xy']} / {entry['symmetric_cells']}", entry["chosen"]]
              for element, result in results.items() for group, entry in result.get("shear_label_check", {}).items()]
    print_table("shear stress labels against the energy-and-force probe (RMS shear error, GPa) and the cells' symmetry",
                ["element", "group", "structures", "as read", "best order", "symmetry broken as read / symmetric cells",
                 "order used (yz, xz, xy taken from)"], checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["mlearn", "mlearn-shallow", "water", "qeq"], required=True)
    parser.add_argument("--md-steps", type=int, default=4000, help="water: NPT MD steps of 0.5 fs")
    parser.add_argument("--calls", type=int, default=3, help="qeq: timed calls per size")
    parser.add_argument("--minutes", type=float, default=12.0, help="mlearn: training budget per element")
    parser.add_argument("--elements", nargs="+", choices=ELEMENTS, default=list(ELEMENTS),
                        help="mlearn: the elements to train, or to resume with a longer --minutes (the learning "
                        "rate rises again and decays over the new end of the budget); the others keep their last results")
    parser.add_argument("--probe-minutes", type=float, default=5.0,
                        help="mlearn: training budget of the energy-and-force probe that checks the shear stress labels")
    parser.add_argument("--dispersion", help="water: add this functional's D3(BJ) to the model (results under "
                        "'water_d3_<functional>')")
    args = parser.parse_args()
    previous = RESULTS / "materials.json"
    sections = json.loads(previous.read_text()) if previous.is_file() else {}  # other sections stay
    sections.pop("machine", None)
    if args.section == "mlearn":
        results = mlearn(args.minutes, args.probe_minutes, args.elements, sections.get("mlearn", {}))
        print_mlearn(results)
        stress = {e: r["stress_uncertainty"] for e, r in results.items() if "stress_uncertainty" in r}
        summary = {k: float(np.median([v[k] for v in stress.values()])) for k in ("spearman", "miscalibration_area")}
        write_results("materials", {**sections, "mlearn": results, "mlearn_model": MLEARN_MODEL, "published_source": PUBLISHED_SOURCE,
                                    "stress_uncertainty": {**summary, "per_element": stress,
                                                           "data": "mlearn test sets (the shared water set has no stress)"}})
        return
    if args.section == "mlearn-shallow":
        shallow = mlearn_shallow()
        print_table("stress on the mlearn test sets, one model per element: its GMM (force-derived score) against "
                    "shallow heads (their own stress spread; their mean is the prediction)",
                    ["element", "minutes", "stress RMSE GPa model / heads", "Spearman GMM / shallow",
                     "miscal. GMM / shallow", "shallow fit s"],
                    [[e, f"{r['max_time_minutes']:.0f}",
                      f"{r['gmm']['stress_rmse_GPa']:.3f} / {r['shallow']['stress_rmse_GPa']:.3f}",
                      " / ".join(f"{r[m]['stress_uncertainty']['spearman']:.2f}" for m in ("gmm", "shallow")),
                      " / ".join(f"{r[m]['stress_uncertainty']['miscalibration_area']:.3f}" for m in ("gmm", "shallow")),
                      f"{r['uq_fit_s']:.0f}"] for e, r in shallow.items()])

        def by_method(method: str) -> dict:
            per_element = {e: {**r[method]["stress_uncertainty"], "stress_rmse_GPa": r[method]["stress_rmse_GPa"],
                               "forces_mae_meV_per_A": r[method]["forces_mae_meV_per_A"],
                               "max_time_minutes": r["max_time_minutes"]} for e, r in shallow.items()}
            medians = {k: float(np.median([v[k] for v in per_element.values()]))
                       for k in ("spearman", "miscalibration_area", "stress_rmse_GPa")}
            return {**medians, "per_element": per_element}

        write_results("materials", {**sections, "stress_uncertainty_by_method": {
            "gmm": by_method("gmm"),
            "shallow": {**by_method("shallow"), "uq_fit_s": {e: r["uq_fit_s"] for e, r in shallow.items()}}}})
        return
    if args.section == "water":
        results = water(args.minutes, args.md_steps, args.dispersion)
        md = results["npt_md"]
        print_table("liquid water (RPBE-D3): held-out errors and NPT MD at 300 K", ["quantity", "value"], [
            ["energy RMSE meV/atom", f"{results['energy_rmse_meV_per_atom']:.2f}"],
            ["force RMSE meV/Å", f"{results['forces_rmse_meV_per_A']:.0f}"],
            ["NPT MD", f"{md['time_ps']:.2f} ps, {len(md['flags'])} flags (threshold {md['threshold_eV_per_A']:.3f} eV/Å)"],
            ["mean T K / P GPa (second half)", f"{md['mean_temperature_K']:.0f} / {md['mean_pressure_GPa']:.3f}"],
            ["density g/cm^3 start -> end", " -> ".join(f"{d:.3f}" for d in md["density_g_per_cm3_start_end"])]])
        key = "water" if args.dispersion is None else f"water_d3_{args.dispersion}"
        write_results("materials", {**sections, key: {**results, "dispersion": args.dispersion}})
        return
    torch.set_num_threads(2)
    rows = qeq_cost(args.calls)
    print_table("charge equilibration in periodic NaCl (CG + PME, float64, 2 threads)",
                ["atoms", "charges s", "charges + forces s", "CG iterations"],
                [[r["atoms"], f"{r['charges_s']:.3f}", f"{r['charges_and_forces_s']:.3f}", r["iterations"]] for r in rows])
    growth = {"charges": slope(rows, "charges_s"), "charges_and_forces": slope(rows, "charges_and_forces_s")}
    print(f"growth exponent (log-log slope, {rows[0]['atoms']} -> {rows[-1]['atoms']} atoms): "
          f"charges N^{growth['charges']:.2f}, with forces N^{growth['charges_and_forces']:.2f} (target <= 1.5)")
    write_results("materials", {**sections, "qeq_cost": {"rows": rows, "growth_exponent": growth}})


if __name__ == "__main__":
    main()
