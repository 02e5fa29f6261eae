"""Compiled inference: a potential's energy, forces and stress as one AOTInductor program.

``compile_potential`` traces the eager potential, forces and stress included (autograd's
backward is recorded as ordinary operations by ``make_fx``), exports the trace with dynamic
numbers of atoms, edges and structures, and compiles it ahead of time with Inductor into a
``.pt2`` package for one device and dtype. :class:`CompiledPotential` runs such a package
with the eager potential's call signature and outputs, so the calculator, MD and active
learning use it in place of the eager model.

An uncertainty whose raw scores follow from the potential's outputs alone (a density on the
latent features, GMM) can be compiled into the same program (``scorer``): the package then also
gives the raw scores and the calibrated uncertainties (:data:`SCORE_KEYS`), tied to the fit they
come from by its digest, so that a package compiled before a new uncertainty fit or calibration
is never read as this one's. A method whose energy is not the potential's own (a learned GP
readout, LNK) can compile its predictions in the potential's place (``predictor``); the package
then stands for that fit only (its digest) and says so (``CompiledPotential.predictor``).

Inductor's CPU code generation fails on the atomic adds of ``index_add`` (an assertion in its
vectorised store, torch 2.13); the trace therefore writes every ``index_add`` as the
equivalent ``scatter_reduce(..., "sum")``, which Inductor hands to ATen's kernel, so the rest
of the program keeps its vectorised loops.

Inductor's CPU kernels are generated serial (``cpp.threads = 1``; matrix products still run
ATen's multi-threaded kernels) unless ``parallel_kernels``. Inductor's default opens an OpenMP
region in every loop worth splitting, even inside a loop over atoms, and on small structures
their start-up costs more than they gain: on 2 threads, over two runs of
``benchmarks/compiled_kernels.py``, the fast preset's program with parallel kernels took
1.22-1.28x the serial time on acac (15 atoms), 1.04-1.15x on 192 water atoms and 0.94-1.05x on
the 1,536-atom water box, so they are for large cells on many cores. The trace's example is two
molecules of 16 atoms, so that Inductor's size hints (its loop splitting and fusion) are those
of a molecule, not of 6 atoms.

A compiled package is native code: load only packages you made or trust.
"""

from __future__ import annotations

import inspect
import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.models.potential import Potential
from incerta.models.spec import PotentialSpec
from incerta.utils.files import atomic_write
from incerta.utils.tensor_files import tensors_digest
from incerta.utils.version import __version__

#: the suffix of compiled packages
COMPILED_SUFFIX = ".pt2"
#: file name of the package in a model folder, per device type and dtype (what the calculator looks for)
COMPILED_NAME = "compiled-{device}-{dtype}.pt2"
#: the program's inputs, in order: (N, 3) Å, (N,), (B, 3, 3) Å, (B, 3), (N,), (2, E), (E, 3), (B,) e, (B,)
INPUT_NAMES = ("positions", "numbers", "cell", "pbc", "batch", "edge_index", "edge_shifts", "charge", "spin")
#: the program's outputs (keys of :mod:`incerta.data.keys`) besides the stress, when the potential gives them
OUTPUT_KEYS = (K.ENERGY, K.FORCES, K.ATOMIC_ENERGIES, K.NODE_FEATURES, K.LAST_LAYER_FEATURES)
#: the outputs a compiled scorer adds: raw scores (N,), (B,); uncertainties (N,) eV/Å, (B,) eV, (B,) eV/Å
SCORE_KEYS = (K.ATOM_SCORE, K.ENERGY_SCORE, K.FORCES_UNCERTAINTY, K.ENERGY_UNCERTAINTY, K.STRUCTURE_UNCERTAINTY)
#: an uncertainty's scores (:data:`SCORE_KEYS`) from a graph and its potential's outputs (traceable torch operations)
Scorer = Callable[[AtomicGraph, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: predictions in place of the potential's own, from a graph, whether to give the stress and the
#: species indices (N,) (traceable torch operations): the outputs of :data:`OUTPUT_KEYS` and the stress
Predictor = Callable[[AtomicGraph, bool, torch.Tensor], dict[str, torch.Tensor]]


class CompileError(RuntimeError):
    """The potential could not be compiled; the message names the step and the cause."""


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights and buffers: ties a compiled file to the weights it was made from."""
    return tensors_digest(module.state_dict())


def _program(potential: Potential, stress: bool, scorer: Scorer | None, predictor: Predictor | None):
    """The function traced: the program's inputs -> (output keys, their tensors), through the
    eager potential's own forward (or the predictor's) and the scorer's (the species check is
    done by the caller at run time)."""

    def run(positions, numbers, cell, pbc, batch, edge_index, edge_shifts, charge, spin):
        graph = AtomicGraph(positions=positions, numbers=numbers, edge_index=edge_index, edge_shifts=edge_shifts,
                            cell=cell, pbc=pbc, batch=batch, charge=charge, spin=spin)
        species = potential.species_lookup[numbers]
        if predictor is None:
            out = potential(graph, compute_forces=True, compute_stress=stress, create_graph=False, species=species)
        else:
            out = predictor(graph, stress, species)
        program = {key: out[key] for key in (*OUTPUT_KEYS, K.STRESS) if key in out}
        if scorer is not None:
            scores = scorer(graph, out)
            program.update({key: scores[key] for key in SCORE_KEYS})
        return program

    return run


def _expanded_index(dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """index_add's index (K,) along ``dim`` -> scatter's index, the shape of ``source``."""
    shape = [1] * source.dim()
    shape[dim] = -1
    return index.view(shape).expand_as(source)


def _index_add(target, dim, index, source, alpha=1):
    source = source if alpha == 1 else source * alpha
    return target.scatter_reduce(dim, _expanded_index(dim, index, source), source, "sum")


def _index_add_(target, dim, index, source, alpha=1):
    source = source if alpha == 1 else source * alpha
    return target.scatter_reduce_(dim, _expanded_index(dim, index, source), source, "sum")


#: index_add written as scatter_reduce sum while tracing (see the module docstring)
SCATTER_DECOMPOSITIONS = {torch.ops.aten.index_add.default: _index_add, torch.ops.aten.index_add_.default: _index_add_}


def example_inputs(potential: Potential, device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """Two molecules of 16 atoms (more if the model has more species) holding every species of
    the model, all pairs as edges: the trace's example (two structures and more than one atom and
    edge, so no size is fixed by it; Inductor's size hints are those of a molecule)."""
    dtype = next(potential.parameters()).dtype
    species = torch.tensor(potential.spec.species)
    per_structure = max(16, len(species))
    numbers = species.repeat(2 * per_structure)[: 2 * per_structure]
    count = len(numbers)
    positions = 1.2 * torch.stack([torch.arange(count) % 3, torch.arange(count) // 3 % 3, torch.arange(count) // 9], 1)
    batch = torch.arange(count) // per_structure
    pairs = torch.cartesian_prod(torch.arange(count), torch.arange(count))
    pairs = pairs[(pairs[:, 0] != pairs[:, 1]) & (batch[pairs[:, 0]] == batch[pairs[:, 1]])].T.contiguous()
    floats = dict(device=device, dtype=dtype)
    return (positions.to(**floats), numbers.to(device), torch.zeros(2, 3, 3, **floats),
            torch.zeros(2, 3, dtype=torch.bool, device=device), batch.to(device), pairs.to(device),
            torch.zeros(pairs.shape[1], 3, **floats), torch.zeros(2, **floats), torch.zeros(2, **floats))


def compile_potential(potential: Potential, path: str | Path, device: str = "cpu", stress: bool = True,
                      scorer: Scorer | None = None, scorer_digest: str | None = None,
                      predictor: Predictor | None = None, parallel_kernels: bool = False) -> Path:
    """Compile ``potential`` (its dtype) for ``device`` into the package ``path`` (written
    atomically), its CPU kernels serial unless ``parallel_kernels`` (module docstring); with
    ``stress`` the program also gives the stress of periodic structures, with
    ``scorer`` the uncertainties (:data:`SCORE_KEYS`) of the fit whose digest is ``scorer_digest``;
    ``predictor`` (with a scorer, whose digest then covers the predictor's weights) predicts in
    place of the potential's forward, which it builds on (e.g. a learned readout on its features).
    Raises :class:`CompileError` naming the step that failed (tracing, export, compilation)."""
    if (scorer is None) != (scorer_digest is None):
        raise ValueError("a compiled scorer needs the digest of its fit, and only a scorer has one")
    if predictor is not None and scorer is None:
        raise ValueError("a compiled predictor needs a scorer whose digest covers the predictor's weights")
    path = Path(path)
    potential = potential.to(device).eval()
    inputs = example_inputs(potential, device)
    program = _program(potential, stress, scorer, predictor)
    step = "running the potential eagerly"
    try:
        with torch.enable_grad():
            program(*inputs)  # what is cached on a first call (e.g. a factorisation of fixed weights) stays out of the trace
        step = "tracing the potential with its forces"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")  # torch's own pytree
            with torch.enable_grad():
                traced = make_fx(program, tracing_mode="symbolic", _allow_non_fake_inputs=True,
                                 decomposition_table=SCATTER_DECOMPOSITIONS)(*inputs)
            step = "exporting with dynamic sizes"
            atoms, edges = torch.export.Dim("atoms", min=2), torch.export.Dim("edges", min=2)
            structures = torch.export.Dim("structures")
            sizes = ({0: atoms}, {0: atoms}, {0: structures}, {0: structures}, {0: atoms}, {1: edges}, {0: edges},
                     {0: structures}, {0: structures})
            exported = torch.export.export(traced, inputs, dynamic_shapes=sizes, strict=False)
            step = "compiling with AOTInductor"
            metadata = {
                "incerta_version": __version__, "spec": potential.spec.model_dump_json(),
                "weights": weights_digest(potential), "dtype": str(inputs[0].dtype).removeprefix("torch."),
                "device": torch.device(device).type, "stress": json.dumps(stress),
                "scorer": json.dumps(scorer_digest), "predictor": json.dumps(predictor is not None),
            }
            configs = {"aot_inductor.metadata": metadata, **({} if parallel_kernels else {"cpp.threads": 1})}

            def write(temporary: Path) -> None:
                with open(temporary, "w+b") as handle:
                    torch._inductor.aoti_compile_and_package(exported, package_path=handle,
                                                             inductor_configs=configs)

            atomic_write(path, write)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        block = _failing_block(potential, err)
        where = f", in block '{block}'" if block else ""
        raise CompileError(f"cannot compile the potential ({step}{where}): {type(err).__name__}: {first}") from err
    return path


def _failing_block(potential: Potential, error: BaseException) -> str | None:
    """The name of the innermost block of ``potential`` whose code the traceback of ``error`` passes through."""
    files: dict[str | None, str] = {}
    for name, block in potential.blocks:  # blocks sharing a file (interactions.k) are named by their group
        file = inspect.getsourcefile(type(block))
        files[file] = name.partition(".")[0] if file in files else name
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        found = files.get(frame.f_code.co_filename, found)
    return found


def compiled_path(folder: str | Path, device: str | torch.device, dtype: torch.dtype) -> Path:
    """Where a model folder keeps its package for ``device`` (type) and ``dtype``."""
    return Path(folder) / COMPILED_NAME.format(device=torch.device(device).type, dtype=str(dtype).removeprefix("torch."))


class CompiledPotential:
    """A compiled package run like the eager potential: ``model(graph, compute_stress=...)``
    gives ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å, ``energies`` (N,) eV, ``node_features``,
    ``last_layer_features`` and, for a package made with stress, ``stress`` (B, 3, 3) eV/Å^3.

    ``spec``, ``species``, ``dtype``, ``device``, ``weights`` (digest), ``scorer`` (the digest of
    the uncertainty fit whose scores, :data:`SCORE_KEYS`, the package also gives; None without,
    and set to None to drop them) and ``predictor`` (True when that fit, not the potential alone,
    gives the energy: the package then serves that fit only) come from the package's metadata;
    the caller checks the graph's elements (as for the eager model)."""

    def __init__(self, path: str | Path, device: str | torch.device | None = None) -> None:
        self.path = Path(path)
        try:
            self.program = torch._inductor.aoti_load_package(str(self.path))
            metadata = self.program.get_metadata()
            self.spec = PotentialSpec.model_validate_json(metadata["spec"])
        except Exception as err:
            raise CompileError(f"{self.path}: not an incerta compiled model ({type(err).__name__}: "
                               f"{(str(err).strip().splitlines() or [''])[0]})") from err
        self.dtype = getattr(torch, metadata["dtype"])
        self.device = torch.device(metadata["device"])
        if device is not None and torch.device(device).type != self.device.type:
            raise CompileError(f"{self.path} was compiled for {self.device.type}, not {torch.device(device).type}; "
                               f"run `incerta compile` with --device {torch.device(device).type}")
        self.stress = json.loads(metadata["stress"])
        self.weights = metadata["weights"]
        self.scorer = json.loads(metadata.get("scorer", "null"))
        self.predictor = json.loads(metadata.get("predictor", "false"))
        self.version = metadata["incerta_version"]

    def check_weights(self, potential: Potential) -> None:
        """Raise :class:`CompileError` unless the package was made from ``potential``'s weights and dtype."""
        if self.weights != weights_digest(potential) or self.dtype != next(potential.parameters()).dtype:
            raise CompileError(f"{self.path} was compiled from other weights than this model's; "
                               "run `incerta compile` again")

    @property
    def species(self) -> list[int]:
        return list(self.spec.species)

    def __call__(self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False,
                 create_graph: bool = False) -> dict[str, torch.Tensor]:
        if compute_stress and not self.stress:
            raise CompileError(f"{self.path} was compiled without stress; run `incerta compile` again with --stress")
        outputs = self.program(*(getattr(graph, name) for name in INPUT_NAMES))
        dropped = (() if compute_stress else (K.STRESS,)) + (() if self.scorer is not None else SCORE_KEYS)
        return {key: value for key, value in outputs.items() if key not in dropped}
