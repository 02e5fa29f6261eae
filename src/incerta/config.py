"""Run configuration: one YAML file validated by typed schemas with helpful errors.

Every option is documented in ``configs/example.yaml``. Unknown keys are rejected
with a "did you mean ..." hint; values are checked for type and range.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from incerta.data.io import ENERGY_UNITS, LENGTH_UNITS, KeyMap


class ConfigError(ValueError):
    """The configuration is invalid; the message names each wrong key and what was expected."""


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(Schema):
    """One labelled file. A plain string in YAML is shorthand for ``{path: ...}``."""

    path: Path
    format: Literal["auto", "extxyz", "npz", "n2p2", "spookynet", "mlearn", "hdf5"] = "auto"
    keys: dict[Literal["energy", "forces", "stress", "virial", "charge", "spin", "atomic_charges", "dipole"], str] = {}
    energy_unit: str | None = None
    length_unit: str | None = None
    select: str | None = Field(None, description="Python-style slice of frames, e.g. ':100' or '::2'")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value

    @field_validator("energy_unit")
    @classmethod
    def _energy_unit(cls, value: str | None) -> str | None:
        if value is not None and value not in ENERGY_UNITS:
            raise ValueError(f"expected one of {sorted(ENERGY_UNITS)}")
        return value

    @field_validator("length_unit")
    @classmethod
    def _length_unit(cls, value: str | None) -> str | None:
        if value is not None and value not in LENGTH_UNITS:
            raise ValueError(f"expected one of {sorted(LENGTH_UNITS)}")
        return value

    @field_validator("select")
    @classmethod
    def _slice(cls, value: str | None) -> str | None:
        if value is not None:
            parse_slice(value)
        return value

    def key_map(self) -> KeyMap:
        return KeyMap(**self.keys)


def parse_slice(text: str) -> slice:
    """'10:20', ':100', '::2' -> slice."""
    parts = text.split(":")
    if len(parts) > 3 or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
        raise ValueError(f"'{text}' is not a slice like ':100' or '10:20:2'")
    values = [int(p) if p.strip() else None for p in parts]
    return slice(*values) if len(values) > 1 else slice(values[0], values[0] + 1)


def _as_list(value: Any) -> Any:
    return [] if value is None else value if isinstance(value, list) else [value]


class DataConfig(Schema):
    """Where the training data is and how to split it."""

    train: list[DataSource]
    validation: list[DataSource] = []
    test: list[DataSource] = []
    n_train: int | None = Field(None, ge=1, description="use at most this many training frames")
    n_val: int | None = Field(None, ge=1, description="validation frames split off the training files")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="used when neither validation nor n_val is given")
    e0s: dict[str, float] | DataSource | None = Field(None, description="isolated-atom energies (eV) or a file of one-atom frames")
    min_distance: float = Field(0.5, ge=0, description="atoms closer than this (Å) are rejected as overlapping")

    _lists = field_validator("train", "validation", "test", mode="before")(_as_list)

    @field_validator("train")
    @classmethod
    def _non_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("give at least one training file")
        return value

    @field_validator("e0s", mode="before")
    @classmethod
    def _e0s_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class ModelConfig(Schema):
    """Architecture of the equivariant potential."""

    cutoff: float = Field(5.0, gt=0, description="neighbour cutoff radius (Å)")
    l_max: int = Field(2, ge=0, le=3, description="highest rotation order of features (0 = invariant model)")
    num_channels: int = Field(32, ge=1, description="features per rotation order")
    num_layers: int = Field(3, ge=1, description="interaction blocks")
    num_radial_basis: int = Field(8, ge=1, description="Bessel functions in the radial basis")
    cutoff_p: int = Field(6, ge=2, description="order of the polynomial cutoff envelope")
    radial_hidden: list[int] = Field([64, 64], description="hidden widths of the radial MLP")
    readout_hidden: int = Field(32, ge=1, description="hidden width of the energy readout")
    electronic_embedding: bool = Field(False, description="total charge and spin (info['charge'], info['spin']) as inputs")
    global_attention: bool = Field(False, description="learned non-local block: every atom sees the whole structure")
    electrostatics: Literal["none", "qeq"] = Field("none", description="qeq: charge equilibration + Coulomb/Ewald energy")
    dispersion: str | None = Field(None, description="add the D3(BJ) dispersion of this functional (e.g. pbe), "
                                   "as in the reference data; molecules only (tad-dftd3)")
    dtype: Literal["float32", "float64"] = "float32"

    @field_validator("dispersion")
    @classmethod
    def _known_functional(cls, value: str | None) -> str | None:
        if value is not None:
            from incerta.nn.dispersion import damping_parameters  # torch only when asked for

            damping_parameters(value)
        return value


class TrainingConfig(Schema):
    """Optimisation. Defaults follow the report's table 5.3.1 (NequIP on MD17)."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(5, ge=1)
    lr: float = Field(0.005, gt=0, description="initial learning rate")
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    energy_weight: float = Field(0.01, ge=0, description="weight of the per-atom energy MSE (eV^2)")
    forces_weight: float = Field(0.99, ge=0, description="weight of the force MSE ((eV/Å)^2)")
    stress_weight: float = Field(0.0, ge=0, description="weight of the stress MSE ((eV/Å^3)^2)")
    charges_weight: float = Field(0.0, ge=0, description="weight of the atomic-charge MSE (e^2), needs reference charges")
    dipole_weight: float = Field(0.0, ge=0, description="weight of the dipole MSE ((e Å)^2), needs reference dipoles")
    scheduler_patience: int = Field(100, ge=0, description="epochs without improvement before the lr is reduced")
    scheduler_factor: float = Field(0.5, gt=0, lt=1)
    min_lr: float = Field(1e-6, ge=0)
    lr_decay_fraction: float = Field(
        0.2, ge=0, lt=1,
        description="final fraction of the budget (epochs or max_time_minutes) over which the lr decays linearly to min_lr",
    )
    ema_decay: float = Field(0.99, ge=0, lt=1, description="exponential moving average of weights (0 = off)")
    clip_grad_norm: float | None = Field(10.0, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after this many epochs without improvement")
    max_time_minutes: float | None = Field(None, gt=0, description="stop when this wall time is spent (resumes add up)")
    progress: bool = True
    device: str = Field("auto", description="where training runs: cpu, cuda, cuda:N, or auto (the GPU when there is one); "
                        "data-parallel ranks on GPUs take cuda:LOCAL_RANK")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N")
        return value


class RunConfig(Schema):
    """A whole training run."""

    seed: int = 0
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _schema_at(schema: type[BaseModel], location: tuple) -> type[BaseModel] | None:
    for part in location:
        if isinstance(part, int):
            continue
        field = schema.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for inner in list(candidates):
            candidates += list(getattr(inner, "__args__", ()))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        schema = nested[0]
    return schema


def explain(error: ValidationError, schema: type[BaseModel], origin: str = "config") -> ConfigError:
    """Turn pydantic errors into one message with key paths and suggestions."""
    lines = []
    seen = set()
    for item in error.errors():
        location = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list["))))
        key = ".".join(str(p) for p in location)
        if item["type"] == "extra_forbidden":
            parent = _schema_at(schema, location[:-1])
            known = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(location[-1]), known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(known)}"
            message = f"{key}: unknown key; {hint}"
        else:
            got = item.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            message = f"{key or '(top level)'}: {item['msg']}{shown}"
        if message not in seen:
            seen.add(message)
            lines.append(message)
    return ConfigError(f"{origin}: invalid configuration\n  " + "\n  ".join(lines))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.lr=0.01' -> (['training', 'lr'], 0.01); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return raw


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, training)")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run configuration; relative data paths are taken from the file's folder."""
    return load_experiment(path, RunConfig, overrides)


class FitSection(Schema):
    """Budget of the uncertainty methods that train (ledl, shallow, svgp, lnk)."""

    epochs: int = Field(30, ge=1)
    lr: float = Field(0.002, gt=0)
    batch_size: int = Field(5, ge=1)
    calibration: Literal["scale", "power", "isotonic"] | None = None


class ShiftSection(Schema):
    """Temperature-shift (or any labelled-groups) experiment."""

    groups: dict[str, DataSource] = Field(..., description="ordered test groups; the first is in-distribution")
    methods: list[str] = ["gmm", "llpr", "svgp"]
    ensemble: int = Field(0, ge=0, description="members of a deep ensemble to add (0 = none)")
    model: Path | None = Field(None, description="use this trained model folder instead of training one")
    aggregate: Literal["max", "mean", "sum"] = "max"
    max_frames: int | None = Field(None, ge=2, description="frames used per group")
    fit: FitSection = FitSection()

    @field_validator("groups")
    @classmethod
    def _two_groups(cls, value: dict) -> dict:
        if len(value) < 2:
            raise ValueError("give at least two groups (in-distribution first)")
        return value


class ShiftConfig(RunConfig):
    """A run configuration (used to train the model) plus the ``shift`` section."""

    shift: ShiftSection


class OODDataset(Schema):
    train: DataSource
    test: DataSource


class OODSection(Schema):
    """One model per dataset, every model tested on every dataset."""

    datasets: dict[str, OODDataset]
    methods: list[str] = ["gmm", "llpr"]
    n_train: int | None = Field(None, ge=1, description="training frames per dataset")
    n_val: int = Field(50, ge=1)
    max_test: int | None = Field(None, ge=4, description="test frames used per dataset")
    aggregate: Literal["max", "mean", "sum"] = "max"
    fit: FitSection = FitSection()
    e0s: dict[str, float] | DataSource | None = None

    @field_validator("datasets")
    @classmethod
    def _two_datasets(cls, value: dict) -> dict:
        if len(value) < 2:
            raise ValueError("give at least two datasets")
        return value


class OODConfig(Schema):
    seed: int = 0
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    ood: OODSection


def load_experiment(path: str | Path, schema: type[Schema], overrides: list[str] = ()) -> Schema:
    """Read a YAML experiment configuration with the same checks and messages as run configs."""
    path = Path(path)
    raw = _read_yaml(path)
    raw = apply_overrides(raw, list(overrides))
    try:
        config = schema.model_validate(raw)
    except ValidationError as err:
        raise explain(err, schema, str(path)) from None
    for source in _sources(config):
        if not source.path.is_absolute():
            source.path = (path.parent / source.path).resolve()
    model = getattr(getattr(config, "shift", None), "model", None)
    if model is not None and not model.is_absolute():
        config.shift.model = (path.parent / model).resolve()
    return config


def _sources(node) -> list[DataSource]:
    """Every DataSource inside a config tree."""
    if isinstance(node, DataSource):
        return [node]
    if isinstance(node, BaseModel):
        return [s for name in type(node).model_fields for s in _sources(getattr(node, name))]
    if isinstance(node, (list, tuple)):
        return [s for item in node for s in _sources(item)]
    if isinstance(node, dict):
        return [s for item in node.values() for s in _sources(item)]
    return []


class OracleSection(Schema):
    """Reference calculator: tblite | pyscf | emt | ase | lookup, with its options."""

    type: Literal["tblite", "pyscf", "emt", "ase", "lookup"] = "tblite"
    options: dict[str, Any] = {}


class MDSection(Schema):
    """Langevin MD driven by the current model."""

    temperature_K: float = Field(300.0, gt=0)
    steps: int = Field(1000, ge=1)
    timestep_fs: float = Field(0.5, gt=0)
    friction_per_fs: float = Field(0.02, gt=0)
    check_every: int = Field(10, ge=1, description="steps between uncertainty checks")
    on_threshold: Literal["branch", "stop"] = Field(
        "branch", description="when an atom passes the threshold: keep the frame and restart from the last safe one, or stop")


class AttackSection(Schema):
    """Gradient ascent on the model's uncertainty with a Boltzmann penalty on energy."""

    steps: int = Field(40, ge=1)
    step_size: float = Field(0.01, gt=0, description="Å per step (Adam learning rate on displacements)")
    temperature_K: float = Field(600.0, gt=0, description="kT of the energy penalty")
    min_distance: float = Field(0.7, gt=0, description="Å; stop before any two atoms come closer")
    per_structure: int = Field(1, ge=1, description="perturbed copies per starting structure")


class CandidateSection(Schema):
    """Where candidates come from."""

    source: Literal["pool", "md", "attack"] = "pool"
    pool: list[DataSource] = Field([], description="frames to choose from (source: pool)")
    structures: list[DataSource] = Field([], description="starting structures (source: md or attack)")
    max_candidates: int = Field(100, ge=1, description="per iteration (md / attack)")
    md: MDSection = MDSection()
    attack: AttackSection = AttackSection()

    _lists = field_validator("pool", "structures", mode="before")(_as_list)


class SelectionSection(Schema):
    strategy: Literal["uncertainty", "random"] = "uncertainty"
    threshold: float = Field(0.0, ge=0, description="eV/Å: label only structures whose uncertainty exceeds this")
    thresholds_by_formula: dict[str, float] = Field({}, description="per-system thresholds, e.g. {C5H8O2: 0.2}")
    batch_size: int = Field(10, ge=1, description="labels per iteration")
    diversity: Literal["fps", "none"] = "fps"


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


class UncertaintySection(Schema):
    method: str = "llpr"
    options: dict[str, Any] = {}
    fit: FitSection = FitSection()


class ActiveSection(Schema):
    oracle: OracleSection = OracleSection()
    candidates: CandidateSection = CandidateSection()
    uncertainty: UncertaintySection = UncertaintySection()
    selection: SelectionSection = SelectionSection()
    stop: StopSection = StopSection()
    retrain: Literal["warm", "scratch"] = "warm"
    epochs_per_iteration: int | None = Field(None, ge=1, description="training epochs after each labelling round")
    cluster: ClusterSection = ClusterSection()
    test: list[DataSource] = Field([], description="extra labelled sets for the learning curves")

    _lists = field_validator("test", mode="before")(_as_list)


class ALConfig(RunConfig):
    """A run configuration (initial data, model, training) plus the ``active`` section."""

    active: ActiveSection
