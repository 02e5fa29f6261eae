"""Readers for the labelled-structure formats incerta accepts, all returning eV/Å Frames.

=================  ==========================  =========================================
format             files                       units in the file (converted on reading)
=================  ==========================  =========================================
``extxyz``         ``*.xyz``, ``*.extxyz``     eV, Å, eV/Å, eV/Å^3 (ASE conventions)
``npz``            rMD17 / sGDML ``*.npz``      kcal/mol, Å, kcal/mol/Å (MD17 family)
``n2p2``           ``input.data``              Hartree, Bohr, Hartree/Bohr
``spookynet``      ``*.db`` (SQLite)           eV, Å, eV/Å, e·Å
``mlearn``         ``*.json`` (Zuo et al.)     eV, Å, eV/Å, stress in kBar (VASP sign)
``hdf5``           ``*.h5`` (incerta store)    eV, Å, eV/Å (``incerta data convert``)
=================  ==========================  =========================================

Every reader checks each frame (see :mod:`incerta.data.validation`) and raises one
:class:`DataError` naming file, frame, atom and field; nothing is dropped silently.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.data import atomic_numbers
from ase.io.formats import get_compression, open_with_compression

from incerta.data.frame import Frame
from incerta.data.validation import DataError, check_frames

KCAL_PER_MOL = units.kcal / units.mol  # eV

ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3, "Hartree": units.Hartree, "kcal/mol": KCAL_PER_MOL, "kJ/mol": units.kJ / units.mol}
LENGTH_UNITS = {"Å": 1.0, "A": 1.0, "Angstrom": 1.0, "Bohr": units.Bohr, "nm": 10.0}


@dataclass(frozen=True)
class KeyMap:
    """Where each label lives in an extended-XYZ file (``info``/``arrays``/calculator).

    ``None`` means "try the usual names": ``REF_<name>`` first, then ``<name>``
    (``total_charge``/``total_spin`` for charge and spin). ``virial`` (eV) is used for
    the stress (stress = -virial / volume) when no stress key is found.
    """

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None
    virial: str | None = None
    charge: str | None = None
    spin: str | None = None
    atomic_charges: str | None = None
    dipole: str | None = None

    def candidates(self, field: str) -> list[str]:
        explicit = getattr(self, field)
        if explicit is not None:
            return [explicit]
        extra = {"charge": ["total_charge"], "spin": ["total_spin"], "atomic_charges": ["charges"]}
        return [f"REF_{field}", field, *extra.get(field, [])]


def _lookup(atoms: ase.Atoms, names: list[str]):
    results = atoms.calc.results if atoms.calc is not None else {}
    for name in names:
        for store in (atoms.info, atoms.arrays, results):
            if name in store:
                return store[name]
    return None


def _as_3x3(value, source: str, field: str) -> np.ndarray:
    value = np.asarray(value, dtype=float)
    if value.shape == (3, 3):
        return value
    if value.size == 9:
        return value.reshape(3, 3)
    if value.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise DataError(f"{source}: {field} has {value.size} components, expected 6 or 9")


def read_extxyz(path: str | Path, keys: KeyMap = KeyMap(), energy_unit: float = 1.0, length_unit: float = 1.0) -> list[Frame]:
    """Extended XYZ (optionally .gz/.bz2/.xz compressed) through ASE."""
    path = Path(path)
    frames: list[Frame] = []
    try:
        with _seekable_text(path) as text:
            for index, atoms in enumerate(ase.io.iread(text, index=":", format="extxyz")):
                frames.append(frame_from_atoms(atoms, f"{path}, frame {index}", keys, energy_unit, length_unit))
    except DataError:
        raise
    except Exception as err:  # ASE raises many types for malformed text
        raise DataError(
            f"{path}: cannot parse frame {len(frames)} (after {len(frames)} good frames): "
            f"{type(err).__name__}: {err}. Is the file truncated or not extended XYZ?"
        ) from err
    if not frames:
        raise DataError(f"{path}: no structures found")
    return frames


#: decompressed text kept in memory up to this size (bytes), beyond it in a temporary file
SPOOL_BYTES = 256 * 2**20


@contextmanager
def _seekable_text(path: Path) -> Iterator:
    """``path``'s text as a file whose seeks are cheap. ASE's extxyz reader indexes the frames and
    then seeks back to each one; in a compressed stream a seek back decompresses again from the
    start, so reading took time quadratic in the frames (400 frames of ethanol .xyz.gz: 1.2 s, of
    which 0.9 s seeking): a compressed file is decompressed once, into a spooled temporary file."""
    if get_compression(str(path))[1] is None:
        with open(path) as handle:
            yield handle
        return
    with open_with_compression(str(path)) as compressed, \
            tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", encoding="utf-8") as text:
        shutil.copyfileobj(compressed, text)
        text.seek(0)
        yield text


def frame_from_atoms(atoms: ase.Atoms, source: str, keys: KeyMap, e_unit: float, l_unit: float) -> Frame:
    frame = Frame.from_atoms(atoms, source)
    frame.positions = frame.positions * l_unit
    frame.cell = frame.cell * l_unit
    energy = _lookup(atoms, keys.candidates("energy"))
    forces = _lookup(atoms, keys.candidates("forces"))
    stress = _lookup(atoms, keys.candidates("stress"))
    virial = _lookup(atoms, keys.candidates("virial"))
    charge = _lookup(atoms, keys.candidates("charge"))
    spin = _lookup(atoms, keys.candidates("spin"))
    if energy is not None:
        frame.energy = float(energy) * e_unit
    if forces is not None:
        frame.forces = np.asarray(forces, dtype=float) * (e_unit / l_unit)
    if stress is not None:
        frame.stress = _as_3x3(stress, source, "stress") * (e_unit / l_unit**3)
    elif virial is not None and frame.periodic:
        frame.stress = -_as_3x3(virial, source, "virial") * e_unit / abs(np.linalg.det(frame.cell))
    if charge is not None:
        frame.charge = float(charge)
    if spin is not None:
        frame.spin = float(spin)
    atomic_charges = _lookup(atoms, keys.candidates("atomic_charges"))
    if atomic_charges is not None:
        frame.atomic_charges = np.asarray(atomic_charges, dtype=float)
    dipole = _lookup(atoms, keys.candidates("dipole"))
    if dipole is not None:
        frame.dipole = np.asarray(dipole, dtype=float) * l_unit
    frame.info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))}
    return frame


def read_npz(path: str | Path, energy_unit: float = KCAL_PER_MOL, length_unit: float = 1.0) -> list[Frame]:
    """rMD17 (``coords``/``energies``/``forces``/``nuclear_charges``) or sGDML (``R``/``E``/``F``/``z``).

    Both families store kcal/mol and kcal/mol/Å; energies are converted with
    1 kcal/mol = 0.0433641 eV (``ase.units``).
    """
    path = Path(path)
    names = [("coords", "energies", "forces", "nuclear_charges"), ("R", "E", "F", "z")]
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{path}: not a readable NumPy .npz file ({err})") from err
    with data:
        layout = next((n for n in names if n[0] in data.files and n[3] in data.files), None)
        if layout is None:
            raise DataError(f"{path}: expected arrays coords/nuclear_charges (rMD17) or R/z (sGDML), found {data.files}")
        r_key, e_key, f_key, z_key = layout
        coords = np.asarray(data[r_key], dtype=float) * length_unit
        numbers = np.asarray(data[z_key], dtype=np.int64)
        energies = np.asarray(data[e_key], dtype=float).reshape(-1) * energy_unit if e_key in data.files else None
        forces = np.asarray(data[f_key], dtype=float) * (energy_unit / length_unit) if f_key in data.files else None
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise DataError(f"{path}: {r_key} has shape {coords.shape}, expected (frames, {len(numbers)}, 3)")
    frames = []
    for k in range(len(coords)):
        frames.append(Frame(
            numbers=numbers, positions=coords[k],
            energy=None if energies is None or k >= len(energies) else float(energies[k]),
            forces=None if forces is None or k >= len(forces) else forces[k],
            source=f"{path}, frame {k}",
        ))
    return frames


def read_n2p2(path: str | Path, energy_unit: float = units.Hartree, length_unit: float = units.Bohr) -> list[Frame]:
    """RuNNer / n2p2 ``input.data``: atomic units by default, converted to eV and Å.

    ``atom x y z element q e fx fy fz`` lines give positions, per-atom reference
    charges q (e) and forces; ``energy`` and ``charge`` (total) close the structure.
    """
    path = Path(path)
    frames: list[Frame] = []
    current: dict | None = None
    force_unit = energy_unit / length_unit
    with open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            words = line.split()
            if not words or words[0] == "comment":
                continue
            where = f"{path}, frame {len(frames)}, line {line_no}"
            try:
                if words[0] == "begin":
                    current = {"lattice": [], "atoms": [], "energy": None, "charge": 0.0, "line": line_no}
                elif current is None:
                    raise DataError(f"{where}: '{words[0]}' outside a begin/end block")
                elif words[0] == "lattice":
                    current["lattice"].append([float(w) for w in words[1:4]])
                elif words[0] == "atom":
                    if len(words) < 10:
                        raise DataError(f"{where}: atom line has {len(words)} fields, expected 10")
                    current["atoms"].append(words[1:10])
                elif words[0] == "energy":
                    current["energy"] = float(words[1])
                elif words[0] == "charge":
                    current["charge"] = float(words[1])
                elif words[0] == "end":
                    frames.append(_n2p2_frame(current, f"{path}, frame {len(frames)}", energy_unit, length_unit, force_unit))
                    current = None
                else:
                    raise DataError(f"{where}: unknown keyword '{words[0]}'")
            except ValueError as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"{where}: cannot parse '{line.strip()}' ({err})") from err
    if current is not None:
        raise DataError(f"{path}: file ends inside frame {len(frames)} (begin at line {current['line']}, no 'end'): truncated?")
    if not frames:
        raise DataError(f"{path}: no structures found")
    return frames


def _n2p2_frame(block: dict, source: str, e_unit: float, l_unit: float, f_unit: float) -> Frame:
    rows = block["atoms"]
    try:
        numbers = np.array([atomic_numbers[r[3]] for r in rows], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"{source}: unknown element {err}") from err
    values = np.array([[float(x) for x in (*r[0:3], r[4], *r[6:9])] for r in rows]).reshape(-1, 7)
    periodic = len(block["lattice"]) == 3
    if block["lattice"] and not periodic:
        raise DataError(f"{source}: {len(block['lattice'])} lattice lines, expected 3")
    return Frame(
        numbers=numbers,
        positions=values[:, 0:3] * l_unit,
        cell=np.array(block["lattice"]) * l_unit if periodic else np.zeros((3, 3)),
        pbc=np.array([periodic] * 3),
        energy=None if block["energy"] is None else block["energy"] * e_unit,
        forces=values[:, 4:7] * f_unit,
        charge=block["charge"],
        atomic_charges=values[:, 3],
        source=source,
    )


def read_spookynet(path: str | Path) -> list[Frame]:
    """SpookyNet SQLite (``data(id, Q, S, Z, R, E, F, D)``): Z int32, R/F/D float32 blobs.

    Q is the total charge (e) and S the number of unpaired electrons; eV, Å, e·Å.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT id, Q, S, Z, R, E, F, D FROM data ORDER BY id").fetchall()
    except sqlite3.Error as err:
        raise DataError(f"{path}: not a SpookyNet database with a table data(id, Q, S, Z, R, E, F, D) ({err})") from err
    frames = []
    for k, (row_id, q, s, z, r, e, f, d) in enumerate(rows):
        numbers = np.frombuffer(z, dtype="<i4").astype(np.int64)
        n = len(numbers)
        source = f"{path}, frame {k} (id {row_id})"
        positions = np.frombuffer(r, dtype="<f4").astype(float)
        forces = None if f is None else np.frombuffer(f, dtype="<f4").astype(float)
        if positions.size != 3 * n or (forces is not None and forces.size != 3 * n):
            raise DataError(f"{source}: {n} atoms but R has {positions.size} and F {None if forces is None else forces.size} values")
        frames.append(Frame(
            numbers=numbers, positions=positions.reshape(n, 3),
            energy=None if e is None else float(e),
            forces=None if forces is None else forces.reshape(n, 3),
            charge=float(q), spin=float(s),
            dipole=None if d is None else np.frombuffer(d, dtype="<f4").astype(float),
            source=source,
        ))
    return frames


def read_mlearn(path: str | Path) -> list[Frame]:
    """mlearn JSON (Zuo et al. 2020): pymatgen structures with energy, forces, virial_stress.

    ``virial_stress`` is VASP's stress in kBar (order xx yy zz xy yz zx, positive under
    compression); it is converted as ASE's VASP reader does: stress = -0.1 GPa * value.
    Each entry's ``group`` (Vacancy, AIMD-NVT, Surface, Elastic) goes to ``frame.info["group"]``.
    Beware: the published Ge, Mo and Si files give the yz and xz components of their Vacancy
    and AIMD-NVT cells (and Mo's Elastic cells) in each other's place, measured against
    energy-and-force models (``benchmarks/materials.py``); the reader keeps the documented
    order for every cell.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({err})") from err
    frames = []
    for k, entry in enumerate(entries):
        source = f"{path}, frame {k}"
        try:
            structure, outputs = entry["structure"], entry["outputs"]
            numbers = np.array([atomic_numbers[s["species"][0]["element"]] for s in structure["sites"]], dtype=np.int64)
            positions = np.array([s["xyz"] for s in structure["sites"]], dtype=float)
            cell = np.array(structure["lattice"]["matrix"], dtype=float)
            stress = None
            if outputs.get("virial_stress") is not None:
                xx, yy, zz, xy, yz, zx = np.asarray(outputs["virial_stress"], dtype=float) * -0.1 * units.GPa
                stress = np.array([[xx, xy, zx], [xy, yy, yz], [zx, yz, zz]])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise DataError(f"{source}: malformed entry ({type(err).__name__}: {err})") from err
        frames.append(Frame(
            numbers=numbers, positions=positions, cell=cell, pbc=np.ones(3, dtype=bool),
            energy=outputs.get("energy"),
            forces=None if outputs.get("forces") is None else np.asarray(outputs["forces"], dtype=float),
            stress=stress, source=source, info={"group": entry["group"]} if "group" in entry else {},
        ))
    return frames


def read_store(path: str | Path) -> list[Frame]:
    """An incerta on-disk graph store (``incerta data convert``), materialised as frames."""
    from incerta.data.store import GraphStore, store_frames

    return store_frames(GraphStore(path))


READERS: dict[str, Callable[..., list[Frame]]] = {
    "extxyz": read_extxyz, "npz": read_npz, "n2p2": read_n2p2, "spookynet": read_spookynet, "mlearn": read_mlearn,
    "hdf5": read_store,
}


def guess_format(path: str | Path) -> str:
    """Format name from the file name (compression suffixes ignored)."""
    name = Path(path).name.lower()
    for suffix in (".gz", ".bz2", ".xz"):
        name = name.removesuffix(suffix)
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    if name.endswith(".npz"):
        return "npz"
    if name == "input.data" or name.endswith(".data"):
        return "n2p2"
    if name.endswith((".db", ".sqlite")):
        return "spookynet"
    if name.endswith(".json"):
        return "mlearn"
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    raise DataError(f"{path}: cannot tell the format from the name; give format: one of {sorted(READERS)}")


def read_frames(
    path: str | Path,
    format: str = "auto",
    keys: KeyMap = KeyMap(),
    energy_unit: str | None = None,
    length_unit: str | None = None,
    require: tuple[str, ...] = (),
    min_distance: float = 0.5,
) -> list[Frame]:
    """Read and validate every frame of ``path``.

    ``energy_unit``/``length_unit`` override the format's default units (names from
    ``ENERGY_UNITS``/``LENGTH_UNITS``); ``require`` names labels every frame must have.

    >>> from incerta.data import default
    >>> frames = read_frames(default.path("test_300K"), require=("energy", "forces"))
    >>> len(frames), frames[0].forces.shape  # eV/Å
    (100, (9, 3))
    >>> frames[0].source.endswith("ethanol_xtb_test_300K.xyz.gz, frame 0")
    True
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    fmt = guess_format(path) if format == "auto" else format
    if fmt not in READERS:
        raise DataError(f"{path}: unknown format '{fmt}', expected one of {sorted(READERS)}")
    kwargs: dict = {"keys": keys} if fmt == "extxyz" else {}
    for name, value, table in (("energy_unit", energy_unit, ENERGY_UNITS), ("length_unit", length_unit, LENGTH_UNITS)):
        if value is None:
            continue
        if value not in table:
            raise DataError(f"{path}: unknown {name} '{value}', expected one of {sorted(table)}")
        if fmt in ("spookynet", "mlearn", "hdf5"):
            raise DataError(f"{path}: the {fmt} format has fixed units; remove {name}")
        kwargs[name] = table[value]
    frames = READERS[fmt](path, **kwargs)
    check_frames(frames, require=require, min_distance=min_distance)
    return frames
