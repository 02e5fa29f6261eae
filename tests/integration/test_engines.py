"""Exported metatomic models in the engines users run: metatomic's ASE calculator in a process
that never imports incerta, TorchSim (batched replicas, NVE), and i-PI over its socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet
from typer.testing import CliRunner

from conftest import copper_frames, emt_ethanol_frames, make_model
from incerta import IncertaCalculator
from incerta.calculators.metatomic import ExportError, export_model
from incerta.cli.main import app
from incerta.models.predict import graphs_for
from incerta.train.checkpoint import save_potential
from incerta.uq.base import FitSettings
from incerta.uq.fit import calibrate
from incerta.uq.methods import METHODS
from incerta.uq.model import UncertainPotential
from incerta.uq.store import save_uncertainty

SPECIES = (1, 6, 8, 29)
#: what the engine checks read in a fresh process: nothing of incerta is imported there
ASE_CHECK = textwrap.dedent("""
    import json, sys
    import ase.io
    from metatomic.torch import ModelOutput
    from metatomic_ase import MetatomicCalculator
    model, structures = sys.argv[1], sys.argv[2]
    calculator = MetatomicCalculator(model, check_consistency=True, uncertainty_threshold=None)
    results = []
    for atoms in ase.io.read(structures, index=":"):
        atoms.calc = calculator
        row = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist(),
               "energies": atoms.get_potential_energies().tolist()}
        if atoms.pbc.all():
            row["stress"] = atoms.get_stress().tolist()
        wanted = {"energy_uncertainty": ModelOutput(unit="eV", sample_kind="system"),
                  "incerta::forces_uncertainty": ModelOutput(unit="eV/Angstrom", sample_kind="atom")}
        if atoms.pbc.all():
            wanted["incerta::stress_uncertainty"] = ModelOutput(unit="eV/Angstrom^3", sample_kind="system")
        out = calculator.run_model(atoms, wanted)
        row.update({name.split("::")[-1]: out[name].block().values.detach().flatten().tolist() for name in wanted})
        results.append(row)
    print(json.dumps({"results": results, "incerta_imported": any(m.startswith("incerta") for m in sys.modules)}))
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A float32 potential with GMM and with LLPR attached (calibrated on EMT ethanol and copper,
    so the calibration has a stress map), saved as model folders and exported by the CLI."""
    folder = tmp_path_factory.mktemp("engines")
    potential = make_model(l_max=1, species=SPECIES).float()
    frames = emt_ethanol_frames(24, 0.1) + copper_frames(24, 0.08, 0.02, seed=0)
    graphs = graphs_for(potential, frames)
    train, validation = graphs[::2], graphs[1::2]
    paths = {}
    for name in ("gmm", "llpr"):
        method = METHODS[name](potential)
        method.fit(train, validation, FitSettings(progress=False))
        calibration = calibrate(method, validation)
        assert calibration.stress is not None
        model = folder / name
        save_potential(potential, model)
        save_uncertainty(model, method, calibration, {})
        result = CliRunner().invoke(app, ["export", str(model), "--out", str(folder / f"{name}.pt")])
        assert result.exit_code == 0, result.output
        paths[name] = (model, folder / f"{name}.pt")
    return paths


def structures() -> list:
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=1)
    copper = bulk("Cu", "fcc", a=3.6).repeat(2)
    copper.rattle(0.05, seed=2)
    return [ethanol, copper]


@pytest.mark.parametrize("method", ["gmm", "llpr"])
def test_exported_model_in_a_fresh_process_reproduces_the_calculator(exported, method, tmp_path):
    model, exported_file = exported[method]
    ase.io.write(tmp_path / "structures.xyz", structures(), format="extxyz")
    done = subprocess.run([sys.executable, "-c", ASE_CHECK, str(exported_file), str(tmp_path / "structures.xyz")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["incerta_imported"]
    for atoms, engine in zip(structures(), report["results"]):
        atoms.calc = IncertaCalculator(model)
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 0.05, "a flat model would make the comparison vacuous"
        assert engine["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
        np.testing.assert_allclose(engine["forces"], forces, atol=1e-4)
        np.testing.assert_allclose(np.sum(engine["energies"]), engine["energy"], atol=1e-5)
        sigma = atoms.calc.get_property("forces_uncertainty", atoms)
        np.testing.assert_allclose(engine["forces_uncertainty"], sigma, rtol=1e-4, atol=1e-4)
        assert engine["energy_uncertainty"][0] == pytest.approx(atoms.calc.get_property("energy_uncertainty", atoms),
                                                               rel=1e-4)
        if atoms.pbc.all():
            np.testing.assert_allclose(engine["stress"], atoms.get_stress(), atol=1e-5)
            np.testing.assert_allclose(engine["stress_uncertainty"], atoms.calc.get_property("stress_uncertainty", atoms),
                                       rtol=1e-4)


def test_export_names_what_it_cannot_export(tmp_path):
    with pytest.raises(ExportError, match=r"block 'dispersion' \(D3Dispersion\)"):
        export_model(make_model(l_max=1, dispersion="pbe"), tmp_path / "d3.pt")
    potential = make_model(l_max=1, species=SPECIES)
    method = METHODS["shallow"](potential)
    calibration = calibrate(method, graphs_for(potential, emt_ethanol_frames(3, 0.1)))
    with pytest.raises(ExportError, match="uncertainty method 'shallow' cannot be exported"):
        export_model(UncertainPotential(method, calibration), tmp_path / "shallow.pt")
    assert not list(tmp_path.iterdir()), "a failed export leaves no file"


def test_exported_model_rejects_an_element_it_never_saw(exported):
    from metatomic_ase import MetatomicCalculator

    atoms = molecule("CH3CH2OH")
    atoms[0].symbol = "Si"
    atoms.calc = MetatomicCalculator(exported["gmm"][1], uncertainty_threshold=None)
    with pytest.raises(Exception, match="does not support the atomic type '14'"):
        atoms.get_potential_energy()


def test_exported_model_takes_the_total_charge_and_spin_from_the_engine(tmp_path):
    from metatomic_ase import MetatomicCalculator

    potential = make_model(l_max=1, species=SPECIES, electronic_embedding=True).float()
    engine = MetatomicCalculator(export_model(potential, tmp_path / "charged.pt"), uncertainty_threshold=None)
    reference = IncertaCalculator(potential)
    energies = {}
    for charge, unpaired in ((0, 0), (1, 1)):
        atoms = molecule("CH3CH2OH")
        atoms.info.update(charge=charge, spin=unpaired)
        expected = reference.get_potential_energy(atoms)
        atoms.info["spin_multiplicity"] = unpaired + 1  # metatomic's convention
        atoms.calc = engine
        energies[charge] = atoms.get_potential_energy()
        assert energies[charge] == pytest.approx(expected, abs=1e-5)
    assert abs(energies[1] - energies[0]) > 1e-3, "the charge and spin reach the model"


def ethanol_replicas(count: int) -> list:
    replicas = []
    for seed in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.03, seed=seed)
        replicas.append(atoms)
    return replicas


def test_torchsim_runs_batched_replicas_with_the_exported_model(exported):
    import torch_sim as ts
    from torch_sim.models.metatomic import MetatomicModel

    engine = MetatomicModel(str(exported["gmm"][1]), device="cpu", compute_stress=False)
    replicas = ethanol_replicas(8)
    state = ts.io.atoms_to_state(replicas, torch.device("cpu"), torch.float32)
    batched = engine(state)
    for k, atoms in enumerate(replicas):  # the batch gives each replica its own energy and forces
        atoms.calc = IncertaCalculator(exported["gmm"][0])
        assert float(batched["energy"][k]) == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(batched["forces"][state.system_idx == k].numpy(), atoms.get_forces(), atol=1e-4)
    init, update = ts.nvt_langevin(engine, dt=torch.tensor(0.5 * 1e-3 * ts.units.MetalUnits.time),
                                   kT=torch.tensor(300 * ts.units.MetalUnits.temperature), seed=0)
    md = init(state)
    for _ in range(20):
        md = update(md)
    displacement = (md.positions - state.positions).norm(dim=1)
    assert torch.isfinite(md.energy).all() and md.energy.shape == (8,)
    assert float(displacement.max()) > 1e-3, "the replicas moved"


def test_torchsim_nve_conserves_energy_like_the_ase_calculator(exported, tmp_path):
    import torch_sim as ts
    from torch_sim.models.metatomic import MetatomicModel

    model, _ = exported["gmm"]
    float64_file = export_model(model, tmp_path / "float64.pt", dtype="float64")
    start = molecule("CH3CH2OH")
    start.rattle(0.05, seed=0)  # from rest: potential energy turns into kinetic energy
    steps, dt_fs = 100, 0.25

    reference = start.copy()
    reference.calc = IncertaCalculator(make_model(l_max=1, species=SPECIES))  # the same weights in float64
    totals = []
    dynamics = VelocityVerlet(reference, timestep=dt_fs * units.fs)
    dynamics.attach(lambda: totals.append(reference.get_total_energy()), interval=1)
    dynamics.run(steps)
    ase_drift = np.ptp(totals)
    assert reference.get_kinetic_energy() > 0.01, "the molecule moved"

    engine = MetatomicModel(str(float64_file), device="cpu", compute_stress=False)
    state = ts.io.atoms_to_state([start], torch.device("cpu"), torch.float64)
    init, update = ts.nve(engine, dt=torch.tensor(dt_fs * 1e-3 * ts.units.MetalUnits.time), kT=torch.tensor(0.0))
    md = init(state)
    totals_ts = []
    for _ in range(steps):
        md = update(md)
        kinetic = 0.5 * (md.momenta.pow(2).sum(dim=1) / md.masses).sum()
        totals_ts.append(float(md.energy[0] + kinetic))
    assert np.ptp(totals_ts) < max(2 * ase_drift, 1e-4), (np.ptp(totals_ts), ase_drift)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


IPI_INPUT = """<simulation verbosity="low" safe_stride="1000">
  <output prefix="md">
    <properties stride="1" filename="out">[ step, temperature{{kelvin}}, potential{{electronvolt}}, conserved{{electronvolt}} ]</properties>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>1</seed></prng>
  <ffsocket name="incerta" mode="inet" pbc="false">
    <address>127.0.0.1</address><port>{port}</port><timeout>60</timeout>
  </ffsocket>
  <system>
    <initialize nbeads="1">
      <file mode="ase">start.xyz</file>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="incerta"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond">0.5</timestep>
        <thermostat mode="langevin"><tau units="femtosecond">50</tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
  </system>
</simulation>
"""


def test_ipi_drives_the_exported_model_over_its_socket(exported, tmp_path):
    model, exported_file = exported["gmm"]
    start = molecule("CH3CH2OH", vacuum=10.0)
    start.rattle(0.03, seed=0)
    start.pbc = False
    ase.io.write(tmp_path / "start.xyz", start, format="extxyz")
    port, steps = free_port(), 20
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(port=port, steps=steps))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([str(bin_dir / "i-pi"), "input.xml"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        driver = subprocess.run(
            [str(bin_dir / "i-pi-py_driver"), "-m", "metatomic", "-a", "127.0.0.1", "-p", str(port),
             "-o", f"template=start.xyz,model={exported_file}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
        server_output = server.communicate(timeout=60)[0]
    finally:
        server.kill()
    rows = np.loadtxt(tmp_path / "md.out", ndmin=2)
    assert len(rows) == steps + 1, server_output[-2000:] + driver.stderr[-2000:]
    start.calc = IncertaCalculator(model)
    assert rows[0, 2] == pytest.approx(start.get_potential_energy(), abs=1e-4)
    assert np.all(np.isfinite(rows)) and rows[-1, 1] > 0
