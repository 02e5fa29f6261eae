"""MD speed of an incerta model in the engines: in-process ASE, the exported metatomic model
through metatomic's ASE calculator, TorchSim with 1 and 8 replicas batched (the exported model,
and the in-process TorchSimPotential), and ``incerta md --replicas 8``'s watched driver.

Steps per second (replica-steps per second for TorchSim) of NVE / Langevin MD with energy and
forces every step, medians over repeats after a warm-up. Systems: acetylacetone (15 atoms, the
shared acac data) and the periodic water box of the shared RPBE-D3 data (192 atoms). Model: the
speed benchmark's size (l_max 2, 32 channels, 3 layers, float32), randomly initialised (timing
does not depend on training), exported with a GMM uncertainty attached (not asked for during the
steps, as in MD between checks); 2 threads. Targets (issue 16): TorchSim with 8 replicas >= 4x the
replica-steps/s of sequential ASE runs on CPU; the exported model within 1.2x of the best
in-process path.

    .venv/bin/python benchmarks/engines.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from common import print_table, shared_data, write_results

from incerta import IncertaCalculator
from incerta.calculators.metatomic import export_model
from incerta.calculators.replicas import TorchSimPotential, run_replica_md
from incerta.config.md import MDSettings
from incerta.data.frame import Frame
from incerta.models.potential import Potential
from incerta.models.predict import graphs_for
from incerta.models.spec import PotentialSpec
from incerta.uq.base import FitSettings
from incerta.uq.calibration import Calibration
from incerta.uq.gmm import GMMUncertainty
from incerta.uq.model import UncertainPotential

TIMESTEP_FS, TEMPERATURE_K = 0.5, 300.0


def systems() -> dict:
    data = shared_data()
    acac = read(data / "botnet/dataset_acac/test_MD_300K.xyz", index=0)
    acac.set_cell(np.zeros((3, 3)))  # a molecule: metatomic wants no cell where there is no periodicity
    return {"acac_15": acac, "water_box_192": read(data / "water_rpbe_d3/test-H2O_RPBE-D3.xyz", index=0)}


def model_for(atoms) -> UncertainPotential:
    """The benchmark's model with a GMM fitted on rattled copies and a unit calibration."""
    torch.manual_seed(0)
    potential = Potential(PotentialSpec(species=sorted(set(atoms.numbers.tolist())), l_max=2, num_channels=32,
                                        num_layers=3)).eval()
    frames = []
    for seed in range(4):
        copy = atoms.copy()
        copy.rattle(0.02, seed=seed)
        frames.append(Frame.from_atoms(copy).with_(energy=0.0, forces=copy.positions * 0.0))
    method = GMMUncertainty(potential)
    method.fit(graphs_for(potential, frames), [], FitSettings(progress=False))
    identity = Calibration.from_json('{"forces": {"kind": "scale", "score_kind": "log-density"}, '
                                     '"energy": {"kind": "scale", "score_kind": "log-density"}}')
    return UncertainPotential(method, identity)


def ase_steps_per_second(atoms, calculator, steps: int, repeats: int) -> list[float]:
    """Langevin MD through an ASE calculator: steps/s of each repeat."""
    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K, friction=0.01 / units.fs,
                        rng=np.random.default_rng(0))
    dynamics.run(2)  # warm-up
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        dynamics.run(steps)
        rates.append(steps / (time.perf_counter() - started))
    return rates


def torchsim_steps_per_second(atoms, engine, replicas: int, steps: int, repeats: int) -> list[float]:
    """Langevin MD of ``replicas`` copies batched in TorchSim with ``engine`` (a TorchSim model):
    replica-steps/s of each repeat."""
    import torch_sim as ts

    copies = []
    for seed in range(replicas):
        copy = atoms.copy()
        copy.rattle(0.01, seed=seed)
        copies.append(copy)
    init, update = ts.nvt_langevin(engine, dt=torch.tensor(TIMESTEP_FS * 1e-3 * ts.units.MetalUnits.time),
                                   kT=torch.tensor(TEMPERATURE_K * ts.units.MetalUnits.temperature), seed=0)
    state = init(ts.io.atoms_to_state(copies, torch.device("cpu"), torch.float32))
    for _ in range(2):
        state = update(state)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            state = update(state)
        rates.append(replicas * steps / (time.perf_counter() - started))
    return rates


def watched_replicas_steps_per_second(atoms, model, replicas: int, steps: int, repeats: int) -> list[float]:
    """``incerta md --replicas``'s driver (Langevin NVT, the GMM uncertainty of every replica
    checked every 10 steps): replica-steps/s of each repeat, set-up included."""
    settings = MDSettings(temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS, steps=max(steps, 10), check_every=10)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_replica_md([atoms] * replicas, model, settings, threshold=1e9, progress=False)
        rates.append(replicas * settings.steps / (time.perf_counter() - started))
    return rates


def measure(name: str, atoms, steps: int, repeats: int, folder: Path) -> list[dict]:
    from metatomic_ase import MetatomicCalculator
    from torch_sim.models.metatomic import MetatomicModel

    model = model_for(atoms)
    exported = export_model(model, folder / f"{name}.pt")
    metatomic = MetatomicModel(str(exported), device="cpu", compute_stress=False)
    native = TorchSimPotential(model)
    paths = {
        "IncertaCalculator (ASE)": lambda: ase_steps_per_second(atoms, IncertaCalculator(model), steps, repeats),
        "exported, metatomic ASE calculator": lambda: ase_steps_per_second(
            atoms, MetatomicCalculator(exported, uncertainty_threshold=None), steps, repeats),
        "exported, TorchSim 1 replica": lambda: torchsim_steps_per_second(atoms, metatomic, 1, steps, repeats),
        "exported, TorchSim 8 replicas": lambda: torchsim_steps_per_second(atoms, metatomic, 8, steps, repeats),
        "TorchSimPotential, 1 replica": lambda: torchsim_steps_per_second(atoms, native, 1, steps, repeats),
        "TorchSimPotential, 8 replicas": lambda: torchsim_steps_per_second(atoms, native, 8, steps, repeats),
        "incerta md --replicas 8 (watched)": lambda: watched_replicas_steps_per_second(atoms, model, 8, steps, repeats),
    }
    rows = []
    for path, run in paths.items():
        rates = run()
        rows.append({"system": name, "atoms": len(atoms), "path": path, "replica_steps_per_s": statistics.median(rates),
                     "quartiles": np.percentile(rates, [25, 75]).tolist(), "repeats": repeats})
        print(f"  {name}: {path}: {rows[-1]['replica_steps_per_s']:.3g} replica-steps/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="steps per repeat (a quarter of it for the water box)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, atoms in systems().items():
            steps = args.steps if len(atoms) < 100 else max(2, args.steps // 4)
            rows += measure(name, atoms, steps, args.repeats, Path(folder))
    ratios = {}
    for name in {row["system"] for row in rows}:
        rate = {row["path"]: row["replica_steps_per_s"] for row in rows if row["system"] == name}
        in_process = rate["IncertaCalculator (ASE)"]
        ratios[name] = {
            "torchsim_8_over_sequential_ase": rate["exported, TorchSim 8 replicas"] / in_process,
            "native_torchsim_8_over_sequential_ase": rate["TorchSimPotential, 8 replicas"] / in_process,
            "watched_replicas_8_over_sequential_ase": rate["incerta md --replicas 8 (watched)"] / in_process,
            "best_in_process_over_exported_ase": in_process / rate["exported, metatomic ASE calculator"],
        }
    print_table("MD speed in the engines (median replica-steps/s, 2 threads, float32)",
                ["system", "path", "replica-steps/s"],
                [[r["system"], r["path"], round(r["replica_steps_per_s"], 2)] for r in rows])
    print_table("ratios (targets: TorchSim 8 / sequential ASE >= 4; in-process / exported <= 1.2)",
                ["system", "exported TorchSim 8 / ASE", "TorchSimPotential 8 / ASE", "watched --replicas 8 / ASE",
                 "in-process / exported"],
                [[name, round(r["torchsim_8_over_sequential_ase"], 2), round(r["native_torchsim_8_over_sequential_ase"], 2),
                  round(r["watched_replicas_8_over_sequential_ase"], 2), round(r["best_in_process_over_exported_ase"], 2)]
                 for name, r in sorted(ratios.items())])
    write_results("engines", {"rows": rows, "ratios": ratios,
                              "settings": {"timestep_fs": TIMESTEP_FS, "temperature_K": TEMPERATURE_K,
                                           "model": "l_max 2, 32 channels, 3 layers, float32, GMM attached"}})


if __name__ == "__main__":
    main()
