"""Settings of uncertainty-watched molecular dynamics (``incerta md`` and active learning's MD)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from incerta.config.schema import Schema

Ensemble = Literal["nve", "nvt", "npt"]
FlagPolicy = Literal["stop", "continue", "rewind"]


class MDSettings(Schema):
    """One MD run: ensemble, thermostat / barostat, length and what happens when the model is unsure.

    ``nve`` is ASE's velocity Verlet (velocities drawn at ``temperature_K``), ``nvt`` Langevin
    or Bussi's stochastic velocity rescaling, ``npt`` the Martyna-Tobias-Klein barostat with a
    Nosé-Hoover chain thermostat (isotropic, or the full cell), for periodic cells only.
    """

    ensemble: Ensemble = "nvt"
    temperature_K: float = Field(300.0, gt=0, description="thermostat target and initial velocities (K)")
    steps: int = Field(1000, ge=1, description="integrator steps, exactly (a rewind counts its discarded steps)")
    timestep_fs: float = Field(0.5, gt=0)
    thermostat: Literal["langevin", "bussi"] = Field("langevin", description="nvt only")
    friction_per_fs: float = Field(0.02, gt=0, description="Langevin friction (1/fs)")
    thermostat_time_fs: float = Field(50.0, gt=0, description="Bussi and Nosé-Hoover time constant (fs)")
    pressure_GPa: float = Field(1e-4, description="npt target pressure (GPa; 1e-4 = 1 bar)")
    barostat_time_fs: float = Field(500.0, gt=0, description="npt barostat time constant (fs)")
    cell: Literal["isotropic", "full"] = Field("isotropic", description="npt: scale the volume only, or let every cell vector move")
    check_every: int = Field(10, ge=1, description="steps between uncertainty checks and log rows")
    write_every: int = Field(10, ge=1, description="steps between trajectory frames")
    on_flag: FlagPolicy = Field(
        "stop", description="when the largest atomic force uncertainty passes the threshold: stop; continue (keep the "
        "frame, go on); rewind (keep the frame, restart from the last frame below it with fresh velocities)")
    fragment_factor: float | None = Field(
        None, gt=1, description="end the run at the first check where the starting molecule comes apart: with atoms "
        "bonded within this factor times the sum of their covalent radii it has more pieces than at the start (a "
        "proton moving between neighbours is not an event); None: never. Periodic structures are not watched "
        "(neighbours part by diffusion)")
    clash_factor: float | None = Field(
        None, gt=0, lt=1, description="end the run at the first check where two atoms are closer than this factor "
        "times the sum of their covalent radii (reference MD of molecules at 1200 K stays above 0.75); None: never")

    @model_validator(mode="before")
    @classmethod
    def _old_policy_name(cls, values: object) -> object:
        """Older configurations named the policy ``on_threshold: branch | stop``."""
        if isinstance(values, dict) and "on_threshold" in values:
            values = dict(values)
            old = values.pop("on_threshold")
            values.setdefault("on_flag", "rewind" if old == "branch" else old)
        return values
