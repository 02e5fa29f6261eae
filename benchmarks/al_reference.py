"""GFN2-xTB (tblite) reference MD for the exploration study of benchmarks/active_learning.py.

Per molecule, independent Langevin trajectories (0.5 fs steps, friction 0.02/fs, 0.5 ps
equilibration, one seed each): the initial training frames at 300 K; the uniform baseline's
reference MD (AIMD) at each test temperature, a frame every 10 fs, which the baseline labels
at a stride; and the test sets at 300, 600 and 1200 K, never used for training or selection.
The MD of the final models at 1200 K and its test for unphysical events live here too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from incerta.calculators.md import MoleculeWatch
from incerta.config.active import MDSection
from incerta.data.io import read_frames
from incerta.data.md_sampling import langevin, sample_temperatures
from incerta.data.validation import DataError

TEMPERATURES_K = (300.0, 600.0, 1200.0)
#: time step (fs) of the final models' stability runs
STABILITY_STEP_FS = 0.5
#: molecule -> its starting geometry in the shared data (first frame)
MOLECULES = {"acac": "botnet/dataset_acac/train_300K.xyz", "aspirin": "rmd17/rmd17_aspirin_train_01.npz"}


def tblite():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def start_structure(shared: Path, molecule: str) -> Atoms:
    frame = read_frames(shared / MOLECULES[molecule])[0]
    return Atoms(numbers=frame.numbers, positions=frame.positions)


def reference_sets(shared: Path, molecule: str, folder: Path, initial: int, per_temperature: int,
                   test: int) -> dict[str, Path]:
    """The files of one molecule (made once, kept in ``folder``): ``initial``, ``uniform_pool`` (AIMD
    at each temperature in turn, ``per_temperature`` frames each) and ``test_<T>K``; the oracle
    time per file in ``timing.json``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder.mkdir(parents=True, exist_ok=True)
    start = start_structure(shared, molecule)
    plan = {"initial": ((300.0,), initial, 40, 1), "uniform_pool": (TEMPERATURES_K, per_temperature, 20, 10),
            **{f"test_{t:.0f}K": ((t,), test, 40, 100 + k) for k, t in enumerate(TEMPERATURES_K)}}
    timing_path = folder / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    paths = {}
    for name, (temperatures, count, interval, seed) in plan.items():
        path = paths[name] = folder / f"{name}.xyz"
        if path.exists():
            continue
        started = time.perf_counter()
        frames = sample_temperatures(start, tblite, temperatures, count, interval=interval, equilibration=1000,
                                     seed=seed, label=f"{molecule} {name}")
        tmp = path.with_suffix(".tmp.xyz")
        ase.io.write(tmp, frames, format="extxyz")
        tmp.rename(path)
        timing[name] = {"seconds": time.perf_counter() - started, "md_steps": len(temperatures) * (1000 + count * interval)}
        timing_path.write_text(json.dumps(timing, indent=1))
    return paths


def stable_run(atoms: Atoms, calculator, temperature_K: float, steps: int, seed: int) -> dict:
    """Langevin MD of ``atoms`` with ``calculator`` (``STABILITY_STEP_FS`` steps) checked every 20 steps for an
    unphysical event, as the active-learning loop watches its MD by default (:class:`MoleculeWatch`
    with ``MDSection``'s factors: the molecule comes apart, a proton moving between neighbours is
    not an event; or two atoms clash), or the model refusing the structure. Returns whether it
    survived and the step and kind of the first event."""
    atoms = atoms.copy()
    atoms.calc = calculator
    guard = MDSection()
    watch = MoleculeWatch.of(atoms, guard.fragment_factor, guard.clash_factor)
    dynamics = langevin(atoms, temperature_K, STABILITY_STEP_FS, 0.02, np.random.default_rng(seed))
    for step in range(20, steps + 1, 20):
        try:
            dynamics.run(20)
        except DataError as err:
            return {"stable": False, "event_step": step, "event": str(err)[:120]}
        event = watch.event(atoms)
        if event is not None:
            return {"stable": False, "event_step": step, "event": event}
    return {"stable": True, "event_step": None, "event": None}
