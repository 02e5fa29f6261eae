"""Shared fixtures: tiny float64 models, test structures, and the path to the reference data."""

from __future__ import annotations

import os
from pathlib import Path

if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs two workers on two cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.data import covalent_radii

from incerta.models.potential import Potential
from incerta.models.spec import PotentialSpec

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Reference data: $INCERTA_SHARED_DATA, default ../shared/data next to the repository."""
    return Path(os.environ.get("INCERTA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set INCERTA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def acac(shared_data: Path) -> Path:
    path = shared_data / "botnet" / "dataset_acac"
    if not (path / "train_300K.xyz").is_file():
        pytest.skip(f"acac data not found in {path}")
    return path


def make_model(l_max: int = 2, cutoff: float = 4.0, species=(1, 6, 8, 14), seed: int = 0, **changes) -> Potential:
    """A small randomly initialised float64 potential with non-trivial energies."""
    torch.manual_seed(seed)
    spec = PotentialSpec(
        species=list(species), cutoff=cutoff, l_max=l_max, num_channels=8, num_layers=2,
        radial_hidden=[16], readout_hidden=8, avg_num_neighbors=6.0,
        energy_shift=[-1.0 * (k + 1) for k in range(len(species))], energy_scale=0.7, **changes,
    )
    model = Potential(spec).double().eval()
    torch.nn.init.normal_(model.readout.output.weight)  # trained models are not flat; zero init would be
    return model


def most_stretched_bond(atoms: Atoms) -> float:
    """The largest bond length of a molecule over the sum of its two atoms' covalent radii (ASE's;
    bonds: pairs within 1.2x that sum): a fragment factor just above it keeps the molecule whole
    by a hair, independently of the MoleculeWatch under test."""
    distances = atoms.get_all_distances()
    radii = covalent_radii[atoms.numbers]
    ratio = distances / (radii[:, None] + radii[None, :])
    return float(ratio[(ratio < 1.2) & (distances > 0)].max())


def emt_ethanol_frames(count: int, rattle: float) -> list:
    """``count`` rattled ethanol molecules labelled by ASE's EMT (cheap, real labels), as frames."""
    from incerta.data.frame import Frame
    from incerta.data.oracles import EMTOracle

    frames = []
    for seed in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(rattle, seed=seed)
        frames.append(EMTOracle().label(Frame.from_atoms(atoms, source=f"rattled {seed}")))
    return frames


def copper_frames(count: int, rattle: float, strain: float, seed: int) -> list:
    """8-atom copper cells, randomly strained (up to ``strain``) and rattled (``rattle`` Å), with EMT labels."""
    from incerta.data.frame import Frame
    from incerta.data.oracles import EMTOracle

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
        deformation = np.eye(3) + strain * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
        atoms.rattle(rattle, seed=int(rng.integers(1 << 30)))
        frames.append(EMTOracle().label(Frame.from_atoms(atoms, source=f"copper {seed}:{k}")))
    return frames


@pytest.fixture(scope="session")
def watched_model():
    """The tiny model with a GMM attached, calibrated on EMT-labelled rattled ethanol."""
    from incerta.models.predict import graphs_for
    from incerta.uq.base import FitSettings
    from incerta.uq.fit import calibrate
    from incerta.uq.gmm import GMMUncertainty
    from incerta.uq.model import UncertainPotential

    model = make_model()
    graphs = graphs_for(model, emt_ethanol_frames(24, 0.08))
    method = GMMUncertainty(model)
    method.fit(graphs[:16], graphs[16:], FitSettings(progress=False))
    return UncertainPotential(method, calibrate(method, graphs[16:]))


@pytest.fixture(params=[0, 1, 2, 3], ids=lambda degree: f"lmax{degree}")
def model_any_lmax(request) -> Potential:
    return make_model(l_max=request.param)


@pytest.fixture
def model() -> Potential:
    return make_model()


@pytest.fixture
def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture
def silicon() -> Atoms:
    """A periodic, slightly distorted, non-orthogonal Si cell (cutoff larger than the cell)."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=2)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * np.random.default_rng(3).normal(size=(3, 3))), scale_atoms=True)
    return atoms
