"""Active learning with real oracles (tblite GFN2-xTB, PySCF DFT), a real Dask LocalCluster,
and real kills."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import ase.io
import cloudpickle
import numpy as np
import pytest
import torch
import yaml
from ase.build import molecule

from incerta.active.labelling import label_on_cluster
from incerta.active.loop import ActiveLearning
from incerta.active.samplers import attack_structure, md_candidates, pool_candidates, training_density
from incerta.active.state import RunState
from incerta.calculators.ase import IncertaCalculator
from incerta.calculators.bias import UncertaintyBiasedCalculator, density_score, score_reference
from incerta.calculators.md import MoleculeWatch, make_dynamics, run_watched_md
from incerta.config import ALConfig, load_experiment
from incerta.config.active import AttackSection, CandidateSection
from incerta.config.md import MDSettings
from incerta.config.schema import ConfigError
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.io import read_frames
from incerta.data.oracles import PySCFOracle, TBLiteOracle
from incerta.models.predict import graphs_for
from incerta.uq.store import load_uncertain_potential
from incerta.utils.cluster import ClusterSpec, connect
from incerta.utils.distributed import DeviceError

SMALL_MODEL = {"l_max": 1, "num_channels": 16, "num_layers": 2, "radial_hidden": [32], "readout_hidden": 16}


def al_yaml(tmp_path, train, pool, epochs: int = 10, **active) -> str:
    config = {
        "seed": 0,
        "data": {"train": train, "n_val": 10},
        "model": SMALL_MODEL,
        "training": {"epochs": epochs, "lr": 0.01, "progress": False},
        "active": {"uncertainty": {"method": "gmm"}, "candidates": {"source": "pool", "pool": pool},
                   "cluster": {"workers": 2}, **active},
    }
    path = tmp_path / "al.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def acac_slices(acac, tmp_path_factory):
    folder = tmp_path_factory.mktemp("slices")
    frames = ase.io.read(acac / "train_300K.xyz", ":60")
    hot = ase.io.read(acac / "train_600K.xyz", ":60")
    ase.io.write(folder / "initial.xyz", frames[:40], format="extxyz")
    ase.io.write(folder / "pool.xyz", frames[40:] + hot, format="extxyz")
    return folder


@pytest.fixture(scope="module")
def first_iteration(acac_slices, tmp_path_factory):
    """A loop on the acac slices (pool of labelled frames) and its iteration-0 model, trained once."""
    folder = tmp_path_factory.mktemp("loop")
    config = load_experiment(al_yaml(folder, str(acac_slices / "initial.xyz"), str(acac_slices / "pool.xyz"),
                                     oracle={"type": "lookup"}, selection={"batch_size": 15}), ALConfig)
    loop = ActiveLearning(config, folder / "run", progress=False)
    loop._prepare()
    return loop, loop.train(0)


@pytest.fixture(scope="module")
def barely_trained(acac_slices, tmp_path_factory):
    """An iteration-0 model trained for one epoch (6 updates) of the same loop: acac comes apart
    under it at 1200 K."""
    folder = tmp_path_factory.mktemp("barely")
    config = load_experiment(al_yaml(folder, str(acac_slices / "initial.xyz"), str(acac_slices / "pool.xyz"), epochs=1,
                                     oracle={"type": "lookup"}), ALConfig)
    loop = ActiveLearning(config, folder / "run", progress=False)
    loop._prepare()
    return loop.train(0)


def test_uncertainty_selection_picks_higher_error_frames_than_random(first_iteration):
    loop, model = first_iteration
    candidates = loop.candidates(0, model, set())
    chosen = set(loop.choose(0, model, candidates))
    potential = load_uncertain_potential(model).potential
    frames = dict(candidates)
    errors = {}
    for key, frame in candidates:
        out = potential(graphs_for(potential, [frame])[0], create_graph=False)
        errors[key] = float(np.sqrt(((out["forces"].detach().numpy() - frame.forces) ** 2).mean()))
    rng = np.random.default_rng(0)
    random_means = [np.mean([errors[k] for k in rng.choice(list(frames), size=len(chosen), replace=False)]) for _ in range(200)]
    chosen_mean = np.mean([errors[k] for k in chosen])
    assert chosen_mean > np.percentile(random_means, 95), (chosen_mean, np.mean(random_means))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_the_loop_scores_candidates_on_the_gpu_as_on_the_cpu(first_iteration, acac_slices):
    """active.device cuda: the same thresholds, candidate scores and diversity features as on the
    CPU (to float32 precision: the loop's model is float32), and its exploration MD runs there."""
    loop, model = first_iteration
    candidates = loop.candidates(0, model, set())
    on_device = {}
    for device in ("cpu", "cuda"):
        loop.device, loop._typical = device, {}
        scores, features = loop.score(model, candidates)
        on_device[device] = (scores, features, loop.thresholds(model, [f for _, f in candidates]))
    for cpu, gpu in zip(on_device["cpu"], on_device["cuda"]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-6)  # float32 model
    section = CandidateSection(source="md", max_candidates=2, md={"temperatures_K": [300.0], "steps": 20, "check_every": 10,
                                                                   "on_flag": "continue"})
    made = md_candidates(load_uncertain_potential(model), read_frames(acac_slices / "pool.xyz")[:1], section, 0.0,
                         iteration=1, seed=0, progress=False, device="cuda")
    assert len(made) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_the_loop_cannot_see_is_refused_before_any_work(acac_slices, tmp_path):
    config = load_experiment(al_yaml(tmp_path, str(acac_slices / "initial.xyz"), str(acac_slices / "pool.xyz"),
                                     device="cuda"), ALConfig)
    with pytest.raises(DeviceError, match=r"active.device is 'cuda' but PyTorch sees no GPU here"):
        ActiveLearning(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"active.device: Value error, 'gpu' is not a device"):
        load_experiment(al_yaml(tmp_path, "t.xyz", "p.xyz", device="gpu"), ALConfig)


def test_oracle_failure_is_survived_and_journaled(tmp_path):
    frames = [Frame.from_atoms(molecule(n)) for n in ("H2O", "NH3")]
    path = tmp_path / "pool.xyz"
    ase.io.write(path, [f.to_atoms() for f in frames], format="extxyz")
    state = RunState(tmp_path / "run")
    client = connect(ClusterSpec(workers=1))
    try:
        failing = PySCFOracle(basis="sto-3g", max_cycle=1)  # a real SCF that cannot converge in one cycle
        results = list(label_on_cluster(client, failing, [("a", frames[0])], ClusterSpec(retries=1)))
        working = PySCFOracle(basis="sto-3g")
        results += list(label_on_cluster(client, working, [("b", frames[1])], ClusterSpec(retries=0)))
    finally:
        client.close()
    failed, good = results
    assert failed.frame is None and "not converged" in failed.error and failed.attempts == 2
    assert good.frame is not None and np.isfinite(good.frame.energy)
    state.log("failed", iteration=0, key=failed.key, error=failed.error, attempts=failed.attempts)
    assert state.failed_keys() == {"a"}


def test_kill_during_labelling_then_resume(acac_slices, tmp_path):
    """kill -9 while PySCF labels; --resume keeps every stored label and labels nothing twice."""
    pool = [Frame.from_atoms(molecule(n)) for n in ("H2O", "NH3", "CH4", "H2O2", "HCN", "CO2", "C2H2", "HCOOH")]
    pool_path = tmp_path / "pool.xyz"
    ase.io.write(pool_path, [f.to_atoms() for f in pool], format="extxyz")
    initial = tmp_path / "initial.xyz"
    atoms = []
    for k, name in enumerate(("H2O", "NH3", "CH4", "HCN", "CO2", "C2H2", "HCOOH", "H2O2") * 3):
        a = molecule(name)
        a.rattle(0.05, seed=k)
        labelled = TBLiteOracle().label(Frame.from_atoms(a))
        atoms.append(labelled.to_atoms())
    ase.io.write(initial, atoms, format="extxyz")
    config = al_yaml(tmp_path, str(initial), str(pool_path), oracle={"type": "pyscf", "options": {"basis": "6-31g"}},
                     selection={"batch_size": 8}, stop={"max_iterations": 1, "max_labels": 8}, epochs_per_iteration=2)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "incerta.cli.main", "al", "run", config, "--out", str(out)]
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = RunState(out)
    deadline = time.time() + 600
    while time.time() < deadline and len(state.labelled()) < 3:
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the whole job, Dask workers included
    victim.wait()
    before = [k for k, _ in state.labelled()]
    assert 3 <= len(before) < 8, before
    done = subprocess.run([sys.executable, "-m", "incerta.cli.main", "al", "run", "--resume", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    after = [k for k, _ in state.labelled()]
    assert len(after) == len(set(after)) == 8, "no duplicates, nothing lost"
    assert after[: len(before)] == before, "stored labels are kept"
    assert {k for k, _ in state.labelled()} == {f"pool-{i}" for i in range(8)}


def test_dask_cluster_survives_a_killed_worker():
    frames = [Frame.from_atoms(molecule(n)) for n in ("H2O", "NH3", "CH4", "HCN", "CO2", "C2H2", "HCOOH", "H2O2")]
    client = connect(ClusterSpec(workers=2))
    try:
        oracle = PySCFOracle(basis="6-31g")
        items = [(f"m{k}", f) for k, f in enumerate(frames)]
        results = []
        killed = False
        for result in label_on_cluster(client, oracle, items, ClusterSpec(retries=0)):
            results.append(result)
            if not killed:
                pids = client.run(os.getpid)
                os.kill(next(iter(pids.values())), signal.SIGKILL)
                killed = True
    finally:
        client.close()
    assert sorted(r.key for r in results) == sorted(k for k, _ in items)
    assert all(r.frame is not None for r in results), [r.error for r in results if r.frame is None]


class WorkerKiller:
    """An oracle whose every call kills the Dask worker running it."""

    name = "killer"

    def label(self, frame):
        os._exit(1)


def test_a_label_that_keeps_killing_workers_is_recorded_under_its_key():
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    client = connect(ClusterSpec(workers=1))
    try:
        [result] = label_on_cluster(client, WorkerKiller(), [("doomed", Frame.from_atoms(molecule("H2O")))], ClusterSpec())
    finally:
        client.close()
    assert result.key == "doomed" and result.frame is None and result.error.startswith("lost: KilledWorker")


def test_md_watcher_stops_at_the_threshold(first_iteration, acac_slices):
    calculator = IncertaCalculator(first_iteration[1])
    start = read_frames(acac_slices / "pool.xyz")[0].to_atoms()
    free = run_watched_md(start, calculator, MDSettings(steps=40), progress=False)
    sigmas = [row["max_force_uncertainty_eV_per_A"] for row in free.log]
    assert len(free.log) == 4 and free.stopped_at is None and free.steps_done == 40
    threshold = 0.5 * min(sigmas)
    stopped = run_watched_md(start, calculator, MDSettings(steps=40, on_flag="stop"), threshold, progress=False)
    assert stopped.stopped_at == 10 and len(stopped.flagged) == 1
    assert stopped.flagged[0].info["structure_uncertainty"] > threshold
    assert stopped.log[-1]["event"].startswith("flagged: stop")


def test_adaptive_threshold_is_a_factor_of_the_models_uncertainty_on_its_validation_frames(
        first_iteration, acac_slices, monkeypatch):
    """selection.threshold_factor: the threshold is that factor times the median over the
    validation frames of each frame's largest atomic force uncertainty (recomputed here through
    the ASE calculator); a formula the validation frames lack gets the median over all of them.
    Without it the fixed threshold, or its formula's entry, holds."""
    loop, model = first_iteration
    calculator = IncertaCalculator(model)
    largest = [float(np.max(calculator.get_property(K.FORCES_UNCERTAINTY, f.to_atoms()))) for f in loop.validation]
    frames = [read_frames(acac_slices / "pool.xyz")[0], Frame.from_atoms(molecule("H2O"))]
    selection = loop.section.selection
    monkeypatch.setattr(loop, "section", loop.section.model_copy(update={"selection": selection.model_copy(
        update={"threshold": 0.1, "thresholds_by_formula": {"H2O": 0.3}})}))
    assert loop.thresholds(model, frames).tolist() == [0.1, 0.3]
    monkeypatch.setattr(loop, "section", loop.section.model_copy(update={"selection": selection.model_copy(
        update={"threshold_factor": 1.5})}))
    np.testing.assert_allclose(loop.thresholds(model, frames), 1.5 * np.median(largest), rtol=1e-5)
    assert 0 < min(largest) < max(largest)


def test_uniform_selection_labels_a_reference_trajectory_at_a_stride(first_iteration, acac_slices, tmp_path):
    """strategy uniform (the practice without active learning): a batch evenly spaced over the
    pool in its order, so 20 frames at 300 K then 60 at 600 K give 2 of 8 labels at 300 K; the
    next iteration spreads over what is left, never a frame twice."""
    config = load_experiment(al_yaml(tmp_path, str(acac_slices / "initial.xyz"), str(acac_slices / "pool.xyz"),
                                     oracle={"type": "lookup"}, selection={"strategy": "uniform", "batch_size": 8}),
                             ALConfig)
    loop = ActiveLearning(config, tmp_path / "run", progress=False)
    pool = read_frames(acac_slices / "pool.xyz")
    candidates = pool_candidates(pool)
    first = loop.choose(0, first_iteration[1], candidates)
    assert first == [f"pool-{i}" for i in (0, 11, 23, 34, 45, 56, 68, 79)]
    assert sum(int(key.split("-")[1]) < 20 for key in first) == 2
    second = loop.choose(1, first_iteration[1], [c for c in candidates if c[0] not in first])
    assert len(second) == 8 and not set(first) & set(second)


def test_md_candidates_at_each_exploration_temperature(first_iteration, acac_slices):
    """md.temperatures_K: each start runs once at each temperature, sharing the candidates; the
    hotter runs move the atoms further from the start in the same time (about sqrt(4) = 2x)."""
    uncertain = load_uncertain_potential(first_iteration[1])
    starts = read_frames(acac_slices / "pool.xyz")[:2]
    section = CandidateSection(source="md", max_candidates=8,
                               md={"temperatures_K": [300.0, 1200.0], "steps": 40, "check_every": 20, "on_flag": "continue",
                                   "fragment_factor": None, "clash_factor": None})  # the barely trained model breaks acac at 1200 K
    made = md_candidates(uncertain, starts, section, 0.0, iteration=1, seed=0, progress=False)
    sources = [frame.source for _, frame in made]
    assert len(made) == 8 and sources.count("md iteration 1, start 1, 1200 K") == 2

    def displacement(frame: Frame) -> float:  # mean over atoms, Å, from the frame's start
        start = starts[int(re.search(r"start (\d+)", frame.source)[1])]
        return float(np.linalg.norm(frame.positions - start.positions, axis=1).mean())

    moved = {t: np.mean([displacement(f) for _, f in made if f.source.endswith(t)]) for t in ("300 K", "1200 K")}
    assert moved["1200 K"] > 1.3 * moved["300 K"], moved


@pytest.mark.parametrize("replicas", [1, 2])
def test_md_candidates_respect_the_data_overlap_limit(barely_trained, acac_slices, replicas):
    """A candidate is read back and labelled under the data's ``min_distance``: MD whose atoms come
    closer ends there. With a 0.93 Å limit (acac's O-H bond, about 1.0 Å, dips below it at 1200 K
    under the barely trained model) every run stops early, yet what it flagged before is kept and
    obeys the limit."""
    uncertain = load_uncertain_potential(barely_trained)
    starts = read_frames(acac_slices / "pool.xyz")[:2]
    section = CandidateSection(source="md", max_candidates=40, md={
        "temperature_K": 1200.0, "steps": 60, "check_every": 2, "on_flag": "continue", "replicas": replicas,
        "fragment_factor": None, "clash_factor": None})
    made = md_candidates(uncertain, starts, section, 0.0, iteration=1, seed=0, progress=False, min_distance=0.93)
    closest = [_closest_pair(frame) for _, frame in made]
    assert made and min(closest) >= 0.93, closest
    assert len(made) < section.max_candidates, "some run ended before its flag budget: the limit stopped it"


@pytest.mark.parametrize("replicas", [1, 2])
def test_md_candidates_are_whole_molecules(barely_trained, acac_slices, replicas):
    """The barely trained model lets acac come apart at 1200 K: without the watch some candidates
    have an unphysical event (a fragment or a clash); with the default watch none has, and the runs end."""
    uncertain = load_uncertain_potential(barely_trained)
    starts = read_frames(acac_slices / "pool.xyz")[:2]
    default = CandidateSection().md

    def candidates(**watch) -> list[tuple[int, Frame]]:
        md = {"temperature_K": 1200.0, "steps": 60, "check_every": 10, "on_flag": "continue", "replicas": replicas}
        section = CandidateSection(source="md", max_candidates=24, md={**md, **watch})
        made = md_candidates(uncertain, starts, section, 0.0, iteration=1, seed=0, progress=False)
        return [(int(re.search(r"start (\d+)", f.source)[1]), f) for _, f in made]

    def unphysical(made: list[tuple[int, Frame]]) -> int:
        watches = [MoleculeWatch.of(start.to_atoms(), default.fragment_factor, default.clash_factor) for start in starts]
        return sum(watches[k].event(f.to_atoms()) is not None for k, f in made)

    free, watched = candidates(fragment_factor=None, clash_factor=None), candidates()
    assert unphysical(free) > 0, "the test needs runs that break the molecule"
    assert watched and unphysical(watched) == 0 and len(watched) < len(free)


def _closest_pair(frame: Frame) -> float:
    """Å, the shortest interatomic distance of a molecule."""
    distances = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
    return float(distances[np.triu_indices(len(frame), 1)].min())


def test_md_candidates_from_batched_replicas(first_iteration, acac_slices):
    """md.replicas: 3 copies of each of two starts run in one TorchSim batch; with a zero threshold
    every check flags, and each replica gives its share of the candidates, named by start and replica."""
    uncertain = load_uncertain_potential(first_iteration[1])
    starts = read_frames(acac_slices / "pool.xyz")[:2]
    section = CandidateSection(source="md", max_candidates=12, md={"replicas": 3, "steps": 20, "check_every": 10})
    made = md_candidates(uncertain, starts, section, 0.0, iteration=1, seed=0, progress=False)
    assert len(made) == 12
    sources = [frame.source for _, frame in made]
    assert sources.count("md iteration 1, start 1, replica 2") == 2
    assert all(frame.energy is None and len(frame) == 15 for _, frame in made), "unlabelled acac frames"
    assert len({frame.positions.tobytes() for _, frame in made}) == 12


def test_biased_md_reaches_less_familiar_structures(first_iteration, acac_slices):
    """Same seed, same temperature, the trained model: the density bias climbs the score S
    (log-sum-exp of the atoms' GMM negative log-likelihoods under the training features);
    measured: S about 1,000 unbiased, 5,000 with k = 0.2 eV (this first model knows little)."""
    uncertain = load_uncertain_potential(first_iteration[1])
    train = graphs_for(uncertain.potential, read_frames(acac_slices / "initial.xyz"))
    density = training_density(uncertain.potential, train, seed=0)
    reference = score_reference(density, train)
    start = read_frames(acac_slices / "pool.xyz")[0].to_atoms()
    scores = {}
    for strength in (0.0, 0.2):
        atoms = start.copy()
        atoms.calc = (UncertaintyBiasedCalculator(uncertain, density, strength, reference) if strength
                      else IncertaCalculator(uncertain))
        dynamics = make_dynamics(atoms, MDSettings(temperature_K=300, timestep_fs=0.5), np.random.default_rng(0))
        trace = []
        for _ in range(6):
            dynamics.run(20)
            graph = graphs_for(uncertain.potential, [Frame.from_atoms(atoms)])[0]
            trace.append(float(density_score(density, uncertain.potential.evaluate(graph)[K.NODE_FEATURES])))
        scores[strength] = np.mean(trace[3:])
    assert scores[0.2] > 2 * scores[0.0], scores


def test_uncertainty_attack_raises_uncertainty_physically(first_iteration, acac_slices):
    potential = load_uncertain_potential(first_iteration[1]).potential
    gmm = training_density(potential, graphs_for(potential, read_frames(acac_slices / "initial.xyz")), seed=0)
    settings = AttackSection(steps=30, step_size=0.02, min_distance=0.8)
    start = read_frames(acac_slices / "pool.xyz")[0]
    attacked, before, after = attack_structure(potential, gmm, start, settings, np.random.default_rng(0))
    assert after > before + 1.0
    distances = attacked.to_atoms().get_all_distances()[np.triu_indices(len(attacked), 1)]
    assert distances.min() >= 0.8
    assert np.abs(attacked.positions - start.positions).max() > 0.05, "the structure actually moved"
