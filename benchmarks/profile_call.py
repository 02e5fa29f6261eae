"""Where the time of one calculator call goes: each stage timed alone, medians over repeated calls.

Stages of ``IncertaCalculator.calculate`` for energy + forces: reading the ASE atoms into a
frame, the element check, the input checks (overlapping atoms through a short neighbour list),
the graph (neighbour list at the cutoff, tensors), the model's energy, energy + forces
(forward and backward), and the uncertainty pass of a GMM and of LLPR (exact and rank 8)
when the caller asks for it; then the same model compiled (``incerta compile``): its energy +
forces, a GMM pass on its outputs, and the whole calculator call with it, alone and followed by
the GMM check an MD step makes when it looks. Systems: acetylacetone (15 atoms) and the periodic water box
(1,536 atoms; GMM only); the speed benchmark's model size (l_max 2, 32 channels, 3 layers, float32),
randomly initialised (timing does not depend on training); 2 threads.

    .venv/bin/python benchmarks/profile_call.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ase.io import read
from common import WORK, print_table, shared_data, write_results

from incerta import IncertaCalculator
from incerta.data.frame import Frame
from incerta.data.graph import frame_to_graph
from incerta.data.validation import frame_problems, overlaps_on_edges
from incerta.models.compiled import CompiledPotential, compile_potential
from incerta.models.potential import Potential
from incerta.models.predict import check_species, graphs_for
from incerta.models.spec import PotentialSpec
from incerta.uq.base import FitSettings
from incerta.uq.calibration import Calibration
from incerta.uq.gmm import GMMUncertainty
from incerta.uq.llpr import LLPRUncertainty
from incerta.uq.model import UncertainPotential


def median_ms(function: Callable[[], object], calls: int) -> float:
    function()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def systems() -> dict:
    data = shared_data()
    return {"acac_15": read(data / "botnet/dataset_acac/test_MD_300K.xyz", index=0),
            "water_box_1536": read(data / "water_rpbe_d3/test-H2O_RPBE-D3.xyz", index=0).repeat((2, 2, 2))}


def uncertain(potential: Potential, method, frames: list[Frame]) -> UncertainPotential:
    """The method fitted on rattled copies (its cost, not its quality, is measured), unit calibration."""
    graphs = graphs_for(potential, frames)
    method.fit(graphs, graphs, FitSettings(progress=False))
    identity = Calibration.from_json('{"forces": {"kind": "scale", "score_kind": "std"}, '
                                     '"energy": {"kind": "scale", "score_kind": "std"}}')
    return UncertainPotential(method, identity)


def profile(name: str, atoms, calls: int, package: Path) -> list[list]:
    species = sorted(set(atoms.numbers.tolist()))
    potential = Potential(PotentialSpec(species=species, l_max=2, num_channels=32, num_layers=3)).eval()
    frame = Frame.from_atoms(atoms)
    graph = frame_to_graph(frame, potential.spec.cutoff).to(dtype=torch.float32)
    periodic = frame.periodic
    rattled = []
    for seed in range(16 if len(atoms) < 100 else 2):
        copy = atoms.copy()
        copy.rattle(0.02, seed=seed)
        rattled.append(Frame.from_atoms(copy).with_(energy=0.0, forces=copy.positions * 0.0))
    stages = [
        ("atoms -> frame", lambda: Frame.from_atoms(atoms)),
        ("element check", lambda: check_species(potential, [frame])),
        ("input checks (overlaps from the graph's edges)", lambda: (
            frame_problems(frame, min_distance=0.0),
            overlaps_on_edges(frame, graph.edge_index.numpy(), graph.edge_shifts.numpy(), 0.1))),
        ("input checks (overlaps by their own 2 Å search, before)", lambda: frame_problems(frame, min_distance=0.1)),
        ("graph (neighbour list, tensors)", lambda: frame_to_graph(frame, potential.spec.cutoff).to(dtype=torch.float32)),
        ("energy (forward)", lambda: potential(graph, compute_forces=False)),
        ("energy + forces (+ stress)", lambda: potential(graph, compute_forces=True, compute_stress=periodic,
                                                        create_graph=False)),
    ]
    methods = {"GMM": GMMUncertainty(potential)}
    if not periodic:  # LLPR's fit takes one backward per feature and atom batch: minutes for 1,536 atoms
        methods.update({"LLPR exact": LLPRUncertainty(potential, rank=None), "LLPR rank 8": LLPRUncertainty(potential, rank=8)})
    fitted = {label: uncertain(potential, method, rattled) for label, method in methods.items()}
    for label, model in fitted.items():
        stages.append((f"+ {label} uncertainty pass", lambda model=model: model(graph, compute_stress=periodic)))
    compiled = CompiledPotential(compile_potential(potential, package, stress=periodic))
    stages.append(("energy + forces (+ stress), compiled", lambda: compiled(graph, compute_stress=periodic)))
    stages.append(("+ GMM pass from the compiled outputs", lambda: fitted["GMM"](
        graph, compute_stress=periodic, outputs=compiled(graph, compute_stress=periodic))))
    probe = atoms.copy()
    calculators = (("", IncertaCalculator(potential), False),
                   (", compiled", IncertaCalculator(potential, compiled=compiled), False),
                   (", compiled, then the GMM check", IncertaCalculator(fitted["GMM"], compiled=compiled), True))
    for label, calculator, check in calculators:

        def whole_call(calculator=calculator, check=check) -> None:
            probe.positions[0, 0] += 1e-6  # a new geometry every call
            calculator.get_forces(probe)
            if check:
                calculator.get_property("forces_uncertainty", probe)

        stages.append((f"whole calculator call (energy + forces){label}", whole_call))
    rows = []
    for label, function in stages:
        rows.append([name, label, round(median_ms(function, calls if len(atoms) < 100 else max(3, calls // 10)), 3)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name, atoms in systems().items():
        rows += profile(name, atoms, args.calls, WORK / "profile_call" / f"{name}.pt2")
    print_table("one calculator call, stage by stage (median ms, 2 threads, float32)", ["system", "stage", "ms"], rows)
    write_results("profile_call", {"rows": [{"system": s, "stage": t, "median_ms": m} for s, t, m in rows]})


if __name__ == "__main__":
    main()
