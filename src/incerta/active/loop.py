"""The active-learning loop: select uncertain candidates -> label -> retrain -> recalibrate.

Folder layout (``out``)::

    config.yaml · initial_train.xyz · validation.xyz   (fixed split of the initial data)
    labelled.xyz · journal.jsonl                        (append-only; see state.py)
    iteration_000/run/ (training run, model with uncertainty) · candidates.xyz · scores.json
    iteration_001/ ...
    report.html · figures/

Every step checks what is already on disk, so ``incerta al run --resume DIR`` continues a
killed run: finished trainings and labels are kept, nothing is labelled twice.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import ase.io
import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from incerta.active.labelling import label_on_cluster
from incerta.active.report import write_al_report
from incerta.active.samplers import attack_candidates, candidate_group, md_candidates, pool_candidates
from incerta.active.selection import select
from incerta.active.state import RunState
from incerta.calculators.ase import usable_compiled
from incerta.calculators.compiling import compile_model
from incerta.config.active import ALConfig
from incerta.config.data import DataSource
from incerta.config.sources import data_set_name, load_sources, prepare_splits
from incerta.config.training import RunConfig
from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.data.io import read_frames
from incerta.data.oracles import build_oracle
from incerta.evaluate.training_report import write_training_report
from incerta.models.compiled import CompileError, compiled_path
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.run import train_run
from incerta.uq.base import FitSettings
from incerta.uq.fit import fit_uncertainty
from incerta.uq.predict import collect
from incerta.uq.store import has_uncertainty, load_uncertain_potential
from incerta.utils.cluster import ClusterSpec, connect
from incerta.utils.distributed import training_device
from incerta.utils.files import atomic_write, atomic_write_text


def _write_frames(path: Path, frames: list[Frame]) -> None:
    atomic_write(path, lambda tmp: ase.io.write(tmp, [f.to_atoms() for f in frames], format="extxyz"))


class ActiveLearning:
    """One run folder; :meth:`run` goes until a stop criterion and returns the reason."""

    def __init__(self, config: ALConfig, out: str | Path, progress: bool = True) -> None:
        self.device = str(training_device(config.active.device, "active.device"))
        self.config, self.out, self.progress = config, Path(out), progress
        self.state = RunState(self.out)
        self.section = config.active
        self._typical: dict[Path, dict[str, float]] = {}  # typical_uncertainty per model, computed once

    # setup -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        config_file = self.out / "config.yaml"
        if not config_file.exists():
            atomic_write_text(config_file, yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        if not (self.out / "validation.xyz").exists():
            splits = prepare_splits(self.config.data, self.config.seed)
            _write_frames(self.out / "initial_train.xyz", splits.train)
            _write_frames(self.out / "validation.xyz", splits.validation)
        self.validation = read_frames(self.out / "validation.xyz")
        self.tests = {data_set_name(s.path): load_sources([s], ("energy", "forces")) for s in self.section.test}
        source = self.section.candidates
        self.pool = load_sources(source.pool) if source.source == "pool" else []
        self.starts = load_sources(source.structures) if source.source != "pool" else []

    def iteration_dir(self, iteration: int) -> Path:
        return self.out / f"iteration_{iteration:03d}"

    def run_config(self, iteration: int) -> RunConfig:
        """Training data of ``iteration``: the initial training frames plus every label so far."""
        data = self.config.data.model_copy(deep=True)
        data.train = [DataSource(path=self.out / "initial_train.xyz")]
        if self.state.labels_path.exists() and iteration > 0:
            data.train.append(DataSource(path=self.state.labels_path))
        data.validation = [DataSource(path=self.out / "validation.xyz")]
        data.n_train, data.n_val, data.test = None, None, []
        training = self.config.training.model_copy()
        if iteration > 0 and self.section.epochs_per_iteration:
            training.epochs = self.section.epochs_per_iteration
        return RunConfig(seed=self.config.seed, data=data, model=self.config.model, training=training)

    def training_frames(self) -> list[Frame]:
        """The initial training frames plus every label so far (what the density bias and the attack avoid)."""
        frames = read_frames(self.out / "initial_train.xyz")
        return frames + (read_frames(self.state.labels_path) if self.state.labels_path.exists() else [])

    # steps -----------------------------------------------------------------------------
    def train(self, iteration: int) -> Path:
        """Train (resumably) and attach a calibrated uncertainty; returns the model folder."""
        run = self.iteration_dir(iteration) / "run"
        model = run / "model"
        if not has_uncertainty(model):
            warm = None
            if iteration > 0 and self.section.retrain == "warm":
                warm = self.iteration_dir(iteration - 1) / "run" / "model"
            config = self.run_config(iteration)
            write_training_report(train_run(config, run, resume=True, initial_model=warm))
            splits = prepare_splits(config.data, config.seed)
            uncertainty = self.section.uncertainty
            fit_uncertainty(model, uncertainty.method, splits.train, splits.validation, uncertainty.options,
                            FitSettings(**uncertainty.fit.model_dump(), seed=self.config.seed, progress=self.progress,
                                        device=self.device))
        if (self.section.compile
                and not compiled_path(model, self.device, getattr(torch, self.config.model.dtype)).exists()):
            try:
                compile_model(model, device=self.device)
            except CompileError as err:
                warnings.warn(f"iteration {iteration}: {err}; its MD runs eagerly", stacklevel=2)
        if not any(e["iteration"] == iteration for e in self.state.events("trained")):
            potential = load_uncertain_potential(model).potential
            metrics = {"validation": error_metrics(potential, graphs_for(potential, self.validation))}
            metrics.update({name: error_metrics(potential, graphs_for(potential, frames)) for name, frames in self.tests.items()})
            self.state.log("trained", iteration=iteration, n_labels=len(self.state.labelled()), metrics=metrics)
        return model

    def candidates(self, iteration: int, model: Path, done: set[str]) -> list[tuple[str, Frame]]:
        """This iteration's candidates (generated once, stored in candidates.xyz)."""
        source = self.section.candidates
        if source.source == "pool":
            return [(k, f) for k, f in pool_candidates(self.pool) if k not in done]
        path = self.iteration_dir(iteration) / "candidates.xyz"
        keys_path = path.with_suffix(".json")
        if not keys_path.exists():
            uncertain = load_uncertain_potential(model)
            if source.source in ("md", "biased-md"):
                compiled = usable_compiled(uncertain, None, model, self.device) if self.section.compile else None
                made = md_candidates(uncertain, self.starts, source, self.thresholds(model, self.starts), iteration,
                                     self.config.seed, self.progress, self.training_frames(),
                                     min_distance=self.config.data.min_distance, compiled=compiled, device=self.device)
            else:
                made = attack_candidates(uncertain.potential, self.training_frames(), self.starts,
                                         source, iteration, self.config.seed)
            _write_frames(path, [f for _, f in made])
            atomic_write_text(keys_path, json.dumps([k for k, _ in made]))
        keys = json.loads(keys_path.read_text())
        frames = read_frames(path, min_distance=self.config.data.min_distance) if keys else []
        return [(k, f) for k, f in zip(keys, frames) if k not in done]

    def choose(self, iteration: int, model: Path, candidates: list[tuple[str, Frame]]) -> list[str]:
        """Keys to label this iteration (journaled once; a resumed run reuses the choice)."""
        chosen = [e for e in self.state.events("selected") if e["iteration"] == iteration]
        if chosen:
            return chosen[-1]["keys"]
        rule = self.section.selection
        if not candidates:
            self.state.log("selected", iteration=iteration, keys=[], scores=[], above=0)
            return []
        if rule.strategy != "uncertainty":  # the baselines: no scores needed (they are the costly part)
            keys = [candidates[i][0] for i in self._baseline_picks(iteration, len(candidates))]
            self.state.log("selected", iteration=iteration, keys=keys, candidates=len(candidates))
            return keys
        scores, features = self.score(model, candidates)
        thresholds = self.thresholds(model, [f for _, f in candidates])
        groups = [candidate_group(key) for key, _ in candidates] if rule.balance == "runs" else None
        picked = select(scores, features, rule.batch_size, thresholds, rule.diversity, groups=groups)
        keys = [candidates[i][0] for i in picked]
        finite = scores[np.isfinite(scores)]
        self.state.log("selected", iteration=iteration, keys=keys, scores=[float(scores[i]) for i in picked],
                       above=int(np.sum(scores > thresholds)), candidates=len(candidates),
                       thresholds=sorted({round(float(t), 6) for t in thresholds}),
                       flagged=int(np.sum(~np.isfinite(scores))),
                       mean_uncertainty=float(np.mean(finite)) if finite.size else None,
                       max_uncertainty=float(np.max(finite)) if finite.size else None)
        return keys

    def thresholds(self, model: Path, frames: list[Frame]) -> np.ndarray:
        """(len(frames),) eV/Å: the uncertainty above which each frame is flagged in MD and can be
        selected: its formula's ``thresholds_by_formula`` entry, else ``threshold``; with
        ``threshold_factor``, that factor times its formula's :meth:`typical_uncertainty`."""
        rule = self.section.selection
        formulas = [frame.to_atoms().get_chemical_formula() for frame in frames]
        if rule.threshold_factor is None:
            return np.array([rule.thresholds_by_formula.get(formula, rule.threshold) for formula in formulas])
        typical = self.typical_uncertainty(model)
        return rule.threshold_factor * np.array([typical.get(formula, typical[""]) for formula in formulas])

    def typical_uncertainty(self, model: Path) -> dict[str, float]:
        """eV/Å: the median over the validation frames of their largest atomic force uncertainty
        under ``model``, per chemical formula, and over all of them (key ""); computed once per model
        (the MD and the selection of an iteration both need it)."""
        if model in self._typical:
            return self._typical[model]
        uncertain = load_uncertain_potential(model).to(self.device)
        predictions = collect(uncertain, graphs_for(uncertain.potential, self.validation))
        largest = np.full(len(self.validation), -np.inf)
        np.maximum.at(largest, predictions["structure"].astype(int), predictions[K.FORCES_UNCERTAINTY])
        formulas = np.array([frame.to_atoms().get_chemical_formula() for frame in self.validation])
        typical = {str(formula): float(np.median(largest[formulas == formula])) for formula in set(formulas)}
        self._typical[model] = {**typical, "": float(np.median(largest))}
        return self._typical[model]

    def _baseline_picks(self, iteration: int, count: int) -> list[int]:
        """Indices of ``count`` candidates for the random or uniform strategy: a seeded random
        batch, or one evenly spaced over the candidates (the first and last included)."""
        size = min(self.section.selection.batch_size, count)
        if self.section.selection.strategy == "random":
            return np.random.default_rng(self.config.seed + 31 * iteration).permutation(count)[:size].tolist()
        return np.round(np.linspace(0, count - 1, size)).astype(int).tolist()

    def score(self, model: Path, candidates: list[tuple[str, Frame]]) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: its score (:meth:`structure_scores`) and mean latent features
        (B, channels), the space batch diversity works in."""
        uncertain = load_uncertain_potential(model).to(self.device)
        cutoff, dtype = uncertain.potential.spec.cutoff, next(uncertain.potential.parameters()).dtype
        graphs = [frame_to_graph(f, cutoff).to(dtype=dtype) for _, f in candidates]  # unknown elements: flagged
        scores = self.structure_scores(collect(uncertain, graphs))
        return scores, _structure_features(uncertain, graphs, np.isfinite(scores))

    def structure_scores(self, predictions: dict[str, np.ndarray]) -> np.ndarray:
        """(B,) selection score from :func:`collect`'s predictions: the calibrated structure
        uncertainty, eV/Å (inf where flagged)."""
        return predictions[K.STRUCTURE_UNCERTAINTY]

    def label(self, iteration: int, keys: list[str], frames: dict[str, Frame], client) -> None:
        """Label the chosen keys not yet labelled or failed; store each label as it arrives."""
        done = {k for k, _ in self.state.labelled()} | self.state.failed_keys()
        todo = [(k, frames[k]) for k in keys if k not in done]
        if not todo:
            return
        cluster = ClusterSpec(**self.section.cluster.model_dump())
        oracle = build_oracle(self.section.oracle.type, **self.section.oracle.options)
        bar = tqdm(total=len(todo), desc=f"labelling ({self.section.oracle.type})", unit="label", disable=not self.progress)
        for result in label_on_cluster(client, oracle, todo, cluster):
            if result.frame is not None:
                self.state.append_label(result.key, iteration, result.frame)
                self.state.log("labelled", iteration=iteration, key=result.key, seconds=result.seconds, attempts=result.attempts)
            else:
                self.state.log("failed", iteration=iteration, key=result.key, error=result.error, attempts=result.attempts)
            bar.update(1)
        bar.close()

    # the loop --------------------------------------------------------------------------
    def run(self) -> str:
        self._prepare()
        stop = self.section.stop
        client = None
        try:
            for iteration in range(stop.max_iterations + 1):
                model = self.train(iteration)
                reason = self._should_stop(iteration)
                if reason:
                    break
                done = {k for k, _ in self.state.labelled()} | self.state.failed_keys()
                candidates = self.candidates(iteration, model, done)
                keys = [k for k in self.choose(iteration, model, candidates) if k not in done]
                budget = stop.max_labels - len(self.state.labelled())
                keys = keys[: max(budget, 0)]
                if not keys:
                    reason = "no candidate above the threshold"
                    break
                if client is None:
                    client = connect(ClusterSpec(**self.section.cluster.model_dump()))
                self.label(iteration, keys, dict(candidates), client)
        finally:
            if client is not None:
                client.close()
        self.state.log("stopped", reason=reason, n_labels=len(self.state.labelled()))
        write_al_report(self.out, self.state)
        return reason

    def _should_stop(self, iteration: int) -> str | None:
        stop = self.section.stop
        if len(self.state.labelled()) >= stop.max_labels:
            return "label budget reached"
        if iteration >= stop.max_iterations:
            return "iteration limit"
        target = stop.target_force_rmse_meV_per_A
        trained = [e for e in self.state.events("trained") if e["iteration"] == iteration]
        if target and trained and trained[-1]["metrics"]["validation"]["forces_rmse_meV_per_A"] <= target:
            return "validation error target reached"
        return None


def _structure_features(uncertain, graphs, known: np.ndarray) -> np.ndarray:
    """Mean latent features per candidate structure (for batch diversity); zeros for the
    ``known == False`` ones (flagged candidates, chosen regardless of diversity)."""
    potential = uncertain.potential
    device = next(potential.parameters()).device
    means = np.zeros((len(graphs), potential.spec.num_channels))
    index = np.flatnonzero(known)
    for start in range(0, len(index), 32):
        chunk = index[start: start + 32]
        batch = collate([graphs[i] for i in chunk])
        with torch.no_grad():
            features = potential(batch.to(device), compute_forces=False)[K.NODE_FEATURES].double().cpu().numpy()
        total = np.zeros((len(chunk), features.shape[1]))
        np.add.at(total, batch.batch.numpy(), features)
        means[chunk] = total / batch.num_atoms.numpy()[:, None]
    return means
