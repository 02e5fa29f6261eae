"""The ``active`` section of an active-learning configuration."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from incerta.config.data import DataSource
from incerta.config.md import FlagPolicy, MDSettings
from incerta.config.schema import Schema, as_list, device_name
from incerta.config.training import RunConfig
from incerta.config.uncertainty import UncertaintySection
from incerta.data.oracles import OracleName


class OracleSection(Schema):
    """Reference calculator: tblite | pyscf | emt | ase | lookup, with its options."""

    type: OracleName = "tblite"
    options: dict[str, Any] = {}


class MDSection(MDSettings):
    """MD driven by the current model; a flagged frame becomes a candidate and, by default, the
    run goes back to the last frame below the threshold and keeps exploring."""

    on_flag: FlagPolicy = "rewind"
    fragment_factor: float | None = Field(
        1.5, gt=1, description="a run ends where its starting molecule comes apart (pieces bonded within this factor "
        "of the covalent bond length; None: never): frames of a molecule the model lets fall apart are not candidates "
        "(set None to explore dissociation; periodic structures are not watched)")
    clash_factor: float | None = Field(
        0.65, gt=0, lt=1, description="a run ends where two atoms come closer than this factor of their covalent bond "
        "length (None: never)")
    replicas: int = Field(1, ge=1, description="source md: copies of each starting structure run together in one "
                          "TorchSim batch (NVE or Langevin NVT), each with its own velocities and uncertainty watch; "
                          "1 runs each start through ASE")
    temperatures_K: list[Annotated[float, Field(gt=0)]] = Field(
        [], description="exploration at several temperatures (K): every start runs once at each, the candidates "
        "shared between them; empty: temperature_K alone")
    bias_eV: float = Field(0.2, gt=0, description="source biased-md: strength k (eV) of the bias -k log(1 + softplus(S - "
                           "S0) / s), S the log-sum-exp of the atoms' GMM negative log-likelihoods under the training "
                           "features, S0 and s its mean and spread over the training structures")

    def runs(self) -> list[MDSettings]:
        """The MD settings of each exploration temperature (``temperatures_K``, else ``temperature_K``)."""
        return [self.model_copy(update={"temperature_K": t}) for t in self.temperatures_K or [self.temperature_K]]


class AttackSection(Schema):
    """Gradient ascent on the model's uncertainty with a Boltzmann penalty on energy."""

    steps: int = Field(40, ge=1)
    step_size: float = Field(0.01, gt=0, description="Å per step (Adam learning rate on displacements)")
    temperature_K: float = Field(600.0, gt=0, description="kT of the energy penalty")
    min_distance: float = Field(0.7, gt=0, description="Å; stop before any two atoms come closer")
    per_structure: int = Field(1, ge=1, description="perturbed copies per starting structure")


class CandidateSection(Schema):
    """Where candidates come from."""

    source: Literal["pool", "md", "biased-md", "attack"] = Field(
        "pool", description="pool; md (model-driven MD watched by the uncertainty); biased-md (the same MD pushed "
        "towards unfamiliar environments, Zaverkin et al. 2024); attack (gradient ascent on the uncertainty)")
    pool: list[DataSource] = Field([], description="frames to choose from (source: pool)")
    structures: list[DataSource] = Field([], description="starting structures (source: md or attack)")
    max_candidates: int = Field(100, ge=1, description="per iteration (md / attack)")
    md: MDSection = MDSection()
    attack: AttackSection = AttackSection()

    _lists = field_validator("pool", "structures", mode="before")(as_list)

    @model_validator(mode="after")
    def _replicas_need_plain_md(self) -> CandidateSection:
        if self.md.replicas > 1 and self.source != "md":
            raise ValueError(f"md.replicas > 1 batches the MD of source 'md'; source '{self.source}' runs one "
                             "structure at a time (set md.replicas: 1)")
        return self


class SelectionSection(Schema):
    strategy: Literal["uncertainty", "random", "uniform"] = Field(
        "uncertainty", description="uncertainty (above the threshold, most uncertain first, diverse); random "
        "(baseline); uniform (evenly spaced over the candidates in their order: for a pool that is a reference MD "
        "trajectory, labelling it at a stride, the practice without active learning)")
    threshold: float = Field(0.0, ge=0, description="eV/Å: label only structures whose uncertainty exceeds this")
    thresholds_by_formula: dict[str, float] = Field({}, description="per-system thresholds, e.g. {C5H8O2: 0.2}")
    threshold_factor: float | None = Field(
        None, gt=0, description="adaptive threshold, in place of threshold and thresholds_by_formula: this factor times "
        "the current model's typical uncertainty on its own validation frames (the median of each frame's largest "
        "atomic force uncertainty, over the frames of the same formula, or all of them when none has it), so MD "
        "runs where the model is as sure as on its data and flags only what is less familiar, at every iteration")
    batch_size: int = Field(10, ge=1, description="labels per iteration")
    diversity: Literal["fps", "none"] = "fps"
    balance: Literal["runs", "none"] = Field(
        "runs", description="runs: each batch shared out evenly among the exploration runs (one start at one "
        "temperature) with candidates above the threshold, the most uncertain of each taken, so the hottest run "
        "does not take every label; none: the most uncertain candidates wherever they come from")


class StopSection(Schema):
    max_labels: int = Field(100, ge=1)
    max_iterations: int = Field(10, ge=1)
    target_force_rmse_meV_per_A: float | None = Field(None, gt=0, description="stop when validation error is below")


class ClusterSection(Schema):
    """Dask: a LocalCluster by default, or a scheduler address (e.g. from dask-jobqueue on SLURM)."""

    scheduler: str | None = None
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    retries: int = Field(1, ge=0)
    time_limit_s: float | None = Field(None, gt=0)


class ActiveSection(Schema):
    oracle: OracleSection = OracleSection()
    candidates: CandidateSection = CandidateSection()
    uncertainty: UncertaintySection = UncertaintySection()
    selection: SelectionSection = SelectionSection()
    stop: StopSection = StopSection()
    retrain: Literal["warm", "scratch"] = "warm"
    epochs_per_iteration: int | None = Field(None, ge=1, description="training epochs after each labelling round")
    compile: bool = Field(False, description="compile each iteration's model (`incerta compile`, about a minute on "
                          "2 cores) so its MD runs several times faster; pays for long MD (source md / biased-md); "
                          "a model that cannot compile runs eagerly, with a warning")
    cluster: ClusterSection = ClusterSection()
    test: list[DataSource] = Field([], description="extra labelled sets for the learning curves")
    device: str = Field("auto", description="where each iteration's uncertainty fit, exploration MD and candidate "
                        "scoring run: cpu, cuda, cuda:N, or auto (the GPU when there is one); training follows "
                        "training.device, labelling the oracle")

    _lists = field_validator("test", mode="before")(as_list)
    _device = field_validator("device")(device_name)

    @model_validator(mode="after")
    def _md_leaves_its_start(self) -> ActiveSection:
        """MD that goes back to its last frame below a zero threshold goes back to its start at every check."""
        rule, source = self.selection, self.candidates
        if (source.source in ("md", "biased-md") and source.md.on_flag == "rewind" and rule.threshold_factor is None
                and rule.threshold == 0 and not rule.thresholds_by_formula):
            raise ValueError("candidates.md.on_flag 'rewind' with a zero threshold: every check would be flagged and "
                             "every run would go back to its start, exploring nothing; set selection.threshold_factor "
                             "(e.g. 1.5: flag what the model is 1.5x less sure of than of its validation frames), "
                             "selection.threshold (eV/Å), or candidates.md.on_flag: continue")
        return self


class ALConfig(RunConfig):
    """A run configuration (initial data, model, training) plus the ``active`` section."""

    active: ActiveSection
