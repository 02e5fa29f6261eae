"""Time one calculator on one system in a fresh process (run under either code's venv).

Prints JSON: median and quartile ms per energy+forces call (with ``--uncertainty``, energy, forces
and the per-atom force uncertainty, its calls alternating with energy+forces calls of the bare
model ``--paired-with`` (default: the same calculator, not asking for it), whose median is
``without_uncertainty_median_ms``: the uncertainty's cost is their ratio, paired in time, so the
machine's drift between processes does not enter it), atoms*steps/s, peak RSS. Only ASE,
NumPy and the code under test are imported, so it runs in a peer's venv too.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
from ase.io import read


def build_system(name: str, data: Path):
    if name == "acac_15":
        return read(data / "botnet/dataset_acac/test_MD_300K.xyz", index=0)
    if name == "ethanol_cluster_27":
        ethanol = read(data / "botnet/dataset_ethanol/test_MD.xyz", index=0)
        ethanol.positions -= ethanol.positions.mean(axis=0)
        atoms = ethanol.copy()
        for shift in ([4.2, 0.0, 0.0], [2.1, 3.6, 0.0]):
            other = ethanol.copy()
            other.positions += shift
            atoms += other
        return atoms
    if name in ("water_192", "water_box_1536"):
        water = read(data / "water_rpbe_d3/test-H2O_RPBE-D3.xyz", index=0)
        return water if name == "water_192" else water.repeat((2, 2, 2))
    raise SystemExit(f"unknown system {name}")


def calculator(code: str, model: str, compiled: bool):
    """The code's ASE calculator; incerta's runs its model folder's package (``compiled``) or eagerly."""
    if code == "incerta":
        from incerta import IncertaCalculator

        calc = IncertaCalculator(model, compiled=None if compiled else False)
        if compiled and calc.compiled is None:
            raise SystemExit(f"{model} holds no usable compiled package: run `incerta compile` on it")
        return calc
    if code == "nequip":
        from nequip_peer import calculator as nequip_calculator

        return nequip_calculator(model)
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=model, device="cpu", default_dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", choices=["incerta", "mace", "nequip"], required=True)
    parser.add_argument("--compiled", action="store_true", help="incerta: run the model folder's compiled package")
    parser.add_argument("--uncertainty", action="store_true", help="incerta: ask for the force uncertainty at every call")
    parser.add_argument("--model", required=True)
    parser.add_argument("--paired-with", help="incerta, with --uncertainty: the bare model folder whose calls "
                        "alternate with the uncertainty's (a package that computes its uncertainties anyway, "
                        "GMM's or LNK's, costs them in every call)")
    parser.add_argument("--system", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    atoms = build_system(args.system, args.data)
    timed = calculator(args.code, args.model, args.compiled)
    bare = calculator(args.code, args.paired_with, args.compiled) if args.paired_with else timed
    rng = np.random.default_rng(0)
    times, paired = [], []
    for call in range(args.calls + 3):
        for asked in (False, True) if args.uncertainty else (False,):  # paired: the bare model between
            atoms.calc = timed if asked or not args.uncertainty else bare
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            started = time.perf_counter()
            atoms.get_forces()
            if asked:
                atoms.calc.get_property("forces_uncertainty", atoms)
            if call >= 3:
                (times if asked == args.uncertainty else paired).append(time.perf_counter() - started)
    median = float(np.median(times))
    extra = {"without_uncertainty_median_ms": 1e3 * float(np.median(paired))} if paired else {}
    print(json.dumps({
        "code": args.code, "compiled": args.compiled, "uncertainty": args.uncertainty, "system": args.system,
        "atoms": len(atoms),
        "median_ms": 1e3 * median, "q25_ms": 1e3 * float(np.percentile(times, 25)),
        "q75_ms": 1e3 * float(np.percentile(times, 75)), "atom_steps_per_s": len(atoms) / median,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra,
    }))


if __name__ == "__main__":
    main()
