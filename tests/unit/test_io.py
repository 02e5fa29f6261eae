"""Readers, unit conversions and the errors bad input must produce."""

from __future__ import annotations

import bz2
import gzip
import lzma
import sqlite3

import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from incerta.data.io import KeyMap, read_frames
from incerta.data.validation import DataError


def labelled(n: int = 3, seed: int = 0, **extra) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
        atoms.calc = SinglePointCalculator(atoms, energy=-14.0 + 0.1 * k, forces=rng.normal(size=(3, 3)), **extra)
        frames.append(atoms)
    return frames


@pytest.fixture
def good_xyz(tmp_path):
    path = tmp_path / "good.xyz"
    ase.io.write(path, labelled(), format="extxyz")
    return path


def test_extxyz_roundtrip(good_xyz):
    frames = read_frames(good_xyz, require=("energy", "forces"))
    reference = ase.io.read(good_xyz, ":")
    assert len(frames) == 3
    for frame, atoms in zip(frames, reference):
        assert frame.energy == pytest.approx(atoms.get_potential_energy())
        np.testing.assert_allclose(frame.forces, atoms.get_forces())
        assert frame.source.endswith(f"frame {reference.index(atoms)}")


def test_extxyz_gzip_and_ref_keys_and_charge(tmp_path):
    atoms = molecule("H2O")
    atoms.info.update(REF_energy=-3.5, energy=99.0, total_charge=-1, spin=1)
    atoms.arrays["REF_forces"] = np.ones((3, 3))
    path = tmp_path / "ref.xyz.gz"
    with gzip.open(path, "wt") as handle:
        ase.io.write(handle, atoms, format="extxyz")
    frame = read_frames(path)[0]
    assert frame.energy == -3.5, "REF_ keys take precedence over plain ones"
    np.testing.assert_allclose(frame.forces, 1.0)
    assert (frame.charge, frame.spin) == (-1.0, 1.0)
    explicit = read_frames(path, keys=KeyMap(energy="energy"))[0]
    assert explicit.energy == 99.0


@pytest.mark.parametrize("opener, suffix", [(gzip.open, "gz"), (bz2.open, "bz2"), (lzma.open, "xz")], ids=["gz", "bz2", "xz"])
def test_compressed_extxyz_reads_every_frame_in_order(good_xyz, tmp_path, opener, suffix):
    """A compressed file (decompressed once into a seekable copy) gives the plain file's frames, in order."""
    text = good_xyz.read_text() * 3
    plain, compressed = tmp_path / "nine.xyz", tmp_path / f"nine.xyz.{suffix}"
    plain.write_text(text)
    with opener(compressed, "wt") as handle:
        handle.write(text)
    expected, frames = read_frames(plain), read_frames(compressed)
    assert len(frames) == 9 and frames[8].source == f"{compressed}, frame 8"
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got.positions, want.positions)
        np.testing.assert_array_equal(got.forces, want.forces)
        assert got.energy == want.energy


def test_truncated_compressed_xyz_names_the_file(good_xyz, tmp_path):
    bad = tmp_path / "cut.xyz.gz"
    bad.write_bytes(gzip.compress(good_xyz.read_bytes())[:-30])
    with pytest.raises(DataError, match=r"cut.xyz.gz: cannot parse frame 0 .*truncated"):
        read_frames(bad)


def test_extxyz_stress_and_virial(tmp_path):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=np.eye(3) * 5.0, pbc=True)
    atoms.info.update(energy=-10.0, virial=np.diag([1.0, 2.0, 3.0]).ravel())
    path = tmp_path / "virial.xyz"
    ase.io.write(path, atoms, format="extxyz")
    frame = read_frames(path)[0]
    np.testing.assert_allclose(np.diag(frame.stress), -np.array([1.0, 2.0, 3.0]) / 125.0)


def test_npz_kcal_to_ev(tmp_path):
    path = tmp_path / "mol.npz"
    coords = molecule("H2O").positions[None].repeat(2, axis=0)
    np.savez(path, coords=coords, energies=np.array([-100.0, -101.0]), forces=np.ones((2, 3, 3)),
             nuclear_charges=np.array([8, 1, 1], dtype=np.uint8))
    frames = read_frames(path)
    assert frames[1].energy == pytest.approx(-101.0 * units.kcal / units.mol)
    assert frames[0].forces[0, 0] == pytest.approx(0.0433641, rel=1e-5)


def test_n2p2_atomic_units(tmp_path):
    path = tmp_path / "input.data"
    path.write_text(
        "begin\ncomment x\n"
        "atom 0.0 0.0 0.0 O -0.8 0.0 0.1 0.0 0.0\n"
        "atom 1.8 0.0 0.0 H 0.4 0.0 -0.1 0.0 0.0\n"
        "atom 0.0 1.8 0.0 H 0.4 0.0 0.0 0.0 0.0\n"
        "energy -76.0\ncharge 0.0\nend\n"
    )
    frame = read_frames(path)[0]
    assert frame.positions[1, 0] == pytest.approx(1.8 * units.Bohr)
    assert frame.energy == pytest.approx(-76.0 * units.Hartree)
    assert frame.forces[0, 0] == pytest.approx(0.1 * units.Hartree / units.Bohr)
    np.testing.assert_allclose(frame.atomic_charges, [-0.8, 0.4, 0.4])


def test_n2p2_truncated(tmp_path):
    path = tmp_path / "input.data"
    path.write_text("begin\natom 0.0 0.0 0.0 O 0.0 0.0 0.0 0.0 0.0\nenergy -1.0\n")
    with pytest.raises(DataError, match=r"ends inside frame 0"):
        read_frames(path)


def test_spookynet_sqlite(tmp_path):
    path = tmp_path / "ag.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE data (id INTEGER PRIMARY KEY, Q FLOAT, S FLOAT, Z BLOB, R BLOB, E FLOAT, F BLOB, D BLOB)")
        z = np.array([47, 47, 47], dtype="<i4").tobytes()
        r = np.array([[0, 0, 0], [2.6, 0, 0], [1.3, 2.2, 0]], dtype="<f4").tobytes()
        f = np.zeros((3, 3), dtype="<f4").tobytes()
        d = np.zeros(3, dtype="<f4").tobytes()
        db.execute("INSERT INTO data VALUES (1, 1.0, 0.0, ?, ?, 4.5, ?, ?)", (z, r, f, d))
        db.execute("INSERT INTO data VALUES (2, -1.0, 2.0, ?, ?, -13.2, ?, ?)", (z, r, f, d))
    frames = read_frames(path)
    assert [(f.charge, f.spin, f.energy) for f in frames] == [(1.0, 0.0, 4.5), (-1.0, 2.0, pytest.approx(-13.2))]
    np.testing.assert_allclose(frames[0].positions[1], [2.6, 0, 0], rtol=1e-6)


def test_shared_readers(shared_data):
    counts = {
        "botnet/dataset_acac/train_300K.xyz": 500,
        "rmd17/rmd17_ethanol_test_01.npz": 1000,
        "n2p2_4g_examples/examples/nnp-train/Carbon_chain_4G/input.data": 128,
        "n2p2_4g_examples/examples/nnp-train/AlAuMgO_4G/input.data": 18,
        "spookynet_ag3_carbene/ag3_2200.db": 2200,
        "mlearn_zuo2020/data/Si/test.json": 25,
    }
    for relative, n in counts.items():
        frames = read_frames(shared_data / relative, require=("energy", "forces"))
        assert len(frames) == n, relative
    silicon = read_frames(shared_data / "mlearn_zuo2020/data/Si/test.json")
    assert [f.info["group"] for f in silicon].count("Elastic") == 6, "mlearn groups kept in frame.info"
    carbon = read_frames(shared_data / "n2p2_4g_examples/examples/nnp-train/Carbon_chain_4G/input.data")
    assert {f.charge for f in carbon} == {0.0, 1.0}
    bond = np.linalg.norm(carbon[0].positions[0] - carbon[0].positions[2])
    assert 1.1 < bond < 1.5, f"C-C bond {bond:.2f} Å: Bohr were not converted"


# ---- bad input: every case names the file, frame and field ---------------------------------


def test_truncated_xyz(good_xyz, tmp_path):
    lines = good_xyz.read_text().splitlines()
    bad = tmp_path / "truncated.xyz"
    bad.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"truncated.xyz: cannot parse frame 2 .*truncated"):
        read_frames(bad)


def test_malformed_number(good_xyz, tmp_path):
    lines = good_xyz.read_text().splitlines()
    lines[7] = lines[7].replace(lines[7].split()[1], "abc", 1)
    bad = tmp_path / "malformed.xyz"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"malformed.xyz: cannot parse frame 1"):
        read_frames(bad)


@pytest.mark.parametrize("field,value,message", [
    ("positions", np.nan, r"frame 1: atom 2: positions contain nan"),
    ("forces", np.inf, r"frame 1: atom 2: forces contain inf"),
    ("energy", np.nan, r"frame 1: energy is nan"),
])
def test_non_finite_values(tmp_path, field, value, message):
    frames = labelled()
    if field == "positions":
        frames[1].positions[2, 1] = value
    elif field == "forces":
        frames[1].calc.results["forces"][2, 0] = value
    else:
        frames[1].calc.results["energy"] = value
    path = tmp_path / "nonfinite.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=message):
        read_frames(path)


def test_non_finite_stress_names_file_frame_and_field(tmp_path):
    frames = []
    for k in range(3):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0, forces=np.zeros((2, 3)),
                                           stress=np.full(6, np.nan if k == 2 else 0.01))
        frames.append(atoms)
    path = tmp_path / "stress.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"stress.xyz, frame 2: stress contains NaN or inf"):
        read_frames(path)


def test_missing_labels(tmp_path):
    atoms = molecule("H2O")
    path = tmp_path / "unlabelled.xyz"
    ase.io.write(path, [atoms, atoms], format="extxyz")
    assert len(read_frames(path)) == 2, "labels are optional unless required"
    with pytest.raises(DataError, match=r"unlabelled.xyz, frame 0: missing energy"):
        read_frames(path, require=("energy", "forces"))
    with pytest.raises(DataError, match=r"frame 1: missing forces"):
        read_frames(path, require=("energy", "forces"))


def test_atom_count_mismatch(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, coords=np.zeros((2, 4, 3)), energies=np.zeros(2), nuclear_charges=np.array([8, 1, 1]))
    with pytest.raises(DataError, match=r"mismatch.npz: coords has shape \(2, 4, 3\), expected \(frames, 3, 3\)"):
        read_frames(path)
    path = tmp_path / "mismatch_forces.npz"
    np.savez(path, coords=molecule("H2O").positions[None], energies=np.zeros(1), forces=np.zeros((1, 2, 3)),
             nuclear_charges=np.array([8, 1, 1]))
    with pytest.raises(DataError, match=r"frame 0: forces have shape \(2, 3\), expected \(3, 3\) for 3 atoms"):
        read_frames(path)


def test_overlapping_atoms(tmp_path):
    frames = labelled()
    frames[2].positions[1] = frames[2].positions[0] + [0.1, 0, 0]
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError, match=r"overlap.xyz, frame 2: atoms 0 and 1 overlap: 0.100 Å apart"):
        read_frames(path)


def test_overlap_through_periodic_image(tmp_path):
    atoms = Atoms("Si2", positions=[[0.05, 0, 0], [4.9, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    path = tmp_path / "image.xyz"
    ase.io.write(path, atoms, format="extxyz")
    with pytest.raises(DataError, match=r"overlap: 0.150 Å apart"):
        read_frames(path)


def test_all_problems_listed_at_once(tmp_path):
    frames = labelled(5)
    frames[1].positions[0, 0] = np.nan
    frames[3].calc.results["energy"] = np.inf
    path = tmp_path / "two_bad.xyz"
    ase.io.write(path, frames, format="extxyz")
    with pytest.raises(DataError) as info:
        read_frames(path)
    assert "2 problem(s)" in str(info.value) and "frame 1" in str(info.value) and "frame 3" in str(info.value)


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"no such file"):
        read_frames(tmp_path / "absent.xyz")
    odd = tmp_path / "data.weird"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        read_frames(odd)
