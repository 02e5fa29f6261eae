"""Candidate structures for active learning: a pool, model-driven MD (biased or not), or an uncertainty attack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from ase import units

from incerta.calculators.ase import IncertaCalculator
from incerta.calculators.bias import UncertaintyBiasedCalculator, density_score, score_reference
from incerta.calculators.md import run_watched_md
from incerta.config.active import AttackSection, CandidateSection, MDSection
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import AtomicGraph, frame_to_graph
from incerta.data.neighbors import edge_lengths, neighbor_list
from incerta.models.compiled import CompiledPotential
from incerta.models.predict import graphs_for, model_dtype
from incerta.uq.base import FitSettings
from incerta.uq.gmm import GMMUncertainty
from incerta.uq.model import UncertainPotential

Candidate = tuple[str, Frame]


def training_density(potential, train_graphs: Sequence[AtomicGraph], seed: int) -> GMMUncertainty:
    """A Gaussian mixture of the training atoms' latent features under the current potential:
    the density that biased MD and the attack push structures away from."""
    density = GMMUncertainty(potential)
    density.fit(train_graphs, [], FitSettings(seed=seed, progress=False))
    return density


def candidate_group(key: str) -> str:
    """The run a candidate came from, named by its key without the last field: ``md-<iteration>-<run>``
    (one start at one temperature), ``attack-<iteration>-<start>``, or ``pool``."""
    return key.rsplit("-", 1)[0]


def pool_candidates(pool: Sequence[Frame]) -> list[Candidate]:
    """Every pool frame, keyed by its position in the pool."""
    return [(f"pool-{index}", frame) for index, frame in enumerate(pool)]


def md_candidates(model: UncertainPotential, starts: Sequence[Frame], section: CandidateSection,
                  thresholds: float | Sequence[float], iteration: int, seed: int, progress: bool,
                  train_frames: Sequence[Frame] = (), min_distance: float = 0.5,
                  compiled: CompiledPotential | None = None, device: str = "cpu") -> list[Candidate]:
    """Frames flagged by uncertainty-watched MD from each starting structure at each exploration
    temperature, above ``thresholds`` (eV/Å; one value, or one per start); with source
    ``biased-md`` the MD runs on the energy tilted by a density bias fitted on
    ``train_frames``; with ``md.replicas`` > 1 the copies of every start run together
    through TorchSim. A run whose atoms come closer than ``min_distance`` Å (the data's own
    overlap limit, so every candidate can be read back and labelled) ends there, keeping what
    it flagged before. ``compiled``, a package of the model's potential, runs the MD steps
    (not the batched replicas); the MD runs on ``device``."""
    settings = section.md.runs()
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=float), (len(starts),))
    per_run = max(1, section.max_candidates // max(len(starts) * len(settings), 1))
    run_seed = seed + 7919 * iteration
    if section.md.replicas > 1:
        flagged = [(k * len(starts) + start, frame) for k, md in enumerate(settings)
                   for start, frame in _replica_flags(model, starts, md, thresholds, per_run, run_seed + 104729 * k,
                                                      iteration, progress, min_distance, device)]
        return _keyed(flagged[: section.max_candidates], iteration)
    if section.source == "biased-md":
        train_graphs = graphs_for(model.potential, train_frames)
        density = training_density(model.potential, train_graphs, seed)
        reference = score_reference(density, train_graphs)
        make_calculator = lambda: UncertaintyBiasedCalculator(model, density, section.md.bias_eV, reference, annotate=False,
                                                              min_distance=min_distance, compiled=compiled, device=device)
    else:
        make_calculator = lambda: IncertaCalculator(model, device, annotate=False, min_distance=min_distance,
                                                    compiled=compiled)
    flagged = []
    for k, md in enumerate(settings):
        for index, start in enumerate(starts):
            run = run_watched_md(start.to_atoms(), make_calculator(), md, float(thresholds[index]), max_flagged=per_run,
                                 seed=run_seed + 104729 * k + index, progress=progress)
            flagged += [(k * len(starts) + index,
                         Frame.from_atoms(atoms, source=f"md iteration {iteration}, start {index}, {md.temperature_K:g} K"))
                        for atoms in run.flagged]
    return _keyed(flagged[: section.max_candidates], iteration)


def _keyed(flagged: list[tuple[int, Frame]], iteration: int) -> list[Candidate]:
    """MD candidates keyed ``md-<iteration>-<run>-<n>`` from (run index, frame) pairs."""
    return [(f"md-{iteration}-{run}-{n}", frame) for n, (run, frame) in enumerate(flagged)]


def _replica_flags(model: UncertainPotential, starts: Sequence[Frame], md: MDSection, thresholds: Sequence[float],
                   per_start: int, seed: int, iteration: int, progress: bool, min_distance: float,
                   device: str) -> list[tuple[int, Frame]]:
    """(start index, frame) for the flagged frames of ``md.replicas`` copies of every start, run in one
    TorchSim batch (each replica ending at its first unphysical event, as ``md`` watches)."""
    from incerta.calculators.replicas import run_replica_md

    copies = md.replicas
    replicas = [start.to_atoms() for start in starts for _ in range(copies)]
    runs = run_replica_md(replicas, model, md, np.repeat(thresholds, copies), max_flagged=max(1, per_start // copies),
                          seed=seed, min_distance=min_distance, progress=progress, device=device)
    return [(replica // copies,
             Frame.from_atoms(atoms, source=f"md iteration {iteration}, start {replica // copies}, replica {replica % copies}"))
            for replica, run in enumerate(runs) for atoms in run.flagged]


def _min_distance(positions: np.ndarray, frame: Frame, bound: float) -> float:
    edges, shifts = neighbor_list(positions, frame.cell, frame.pbc, bound)
    return float(edge_lengths(positions, frame.cell, edges, shifts).min(initial=np.inf))


def attack_structure(
    potential, gmm: GMMUncertainty, frame: Frame, settings: AttackSection, rng: np.random.Generator
) -> tuple[Frame, float, float]:
    """Gradient ascent on log-sum-exp of atomic NLLs minus (E - E0)/kT (Schwalbe-Koda et al. 2021).

    Stops before two atoms come closer than ``settings.min_distance``. Returns the new
    frame and the score before and after."""
    dtype = model_dtype(potential)
    graph = frame_to_graph(frame, potential.spec.cutoff).to(dtype=dtype)
    kT = units.kB * settings.temperature_K
    start = torch.as_tensor(frame.positions, dtype=dtype) + torch.as_tensor(rng.normal(scale=0.01, size=frame.positions.shape), dtype=dtype)
    displacement = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.Adam([displacement], lr=settings.step_size)

    def objective(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        moved: AtomicGraph = replace(graph, positions=positions)
        out = potential.evaluate(moved)
        return density_score(gmm, out[K.NODE_FEATURES]), out[K.ENERGY].sum()

    with torch.no_grad():
        first_score, first_energy = objective(start)
    accepted = start.detach().clone()
    for _ in range(settings.steps):
        uncertainty, energy = objective(start + displacement)
        loss = -(uncertainty - (energy - first_energy) / kT)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trial = (start + displacement).detach()
        if _min_distance(trial.double().numpy(), frame, settings.min_distance) < settings.min_distance:
            break
        accepted = trial
    with torch.no_grad():
        final_score, _ = objective(accepted)
    new = frame.with_(positions=accepted.double().numpy(), energy=None, forces=None,
                      source=f"attack on {frame.source}")
    return new, float(first_score), float(final_score)


def attack_candidates(potential, train_frames: Sequence[Frame], starts: Sequence[Frame], section: CandidateSection,
                      iteration: int, seed: int) -> list[Candidate]:
    """Structures pushed towards high uncertainty, from each start (several copies each)."""
    gmm = training_density(potential, graphs_for(potential, train_frames), seed)
    rng = np.random.default_rng(seed + 104729 * iteration)
    made = []
    for index, start in enumerate(starts):
        for copy in range(section.attack.per_structure):
            frame, _, _ = attack_structure(potential, gmm, start, section.attack, rng)
            made.append((f"attack-{iteration}-{index}-{copy}", frame))
    return made[: section.max_candidates]
