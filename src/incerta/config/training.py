"""The ``training`` section and the whole run configuration (``seed``, data, model, training)."""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import Field, field_validator

from incerta.config.data import DataConfig
from incerta.config.model import ModelConfig
from incerta.config.schema import Schema, device_name


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
        description="final fraction of the budget (epochs or max_time_minutes) over which the lr decays linearly to min_lr; "
        "a run resumed with a longer budget goes on from the lr its decay began at",
    )
    ema_decay: float = Field(0.99, ge=0, lt=1, description="exponential moving average of weights (0 = off)")
    ema_warmup: bool = Field(True, description="the average's decay warms up as min(ema_decay, (1 + n) / (10 + n)) "
                             "over the first updates n, so a short run exports the weights it reached (false: the "
                             "fixed decay of earlier runs)")
    clip_grad_norm: float | None = Field(10.0, gt=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after this many epochs without improvement")
    max_time_minutes: float | None = Field(None, gt=0, description="stop when this wall time is spent (resumes add up)")
    progress: bool = True
    device: str = Field("auto", description="where training runs: cpu, cuda, cuda:N, or auto (the GPU when there is one); "
                        "data-parallel ranks on GPUs take cuda:LOCAL_RANK")

    _device = field_validator("device")(device_name)


class RunConfig(Schema):
    """A whole training run."""

    seed: int = 0
    data: DataConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
