"""The ``model`` section: architecture of the equivariant potential.

:class:`Architecture` is the one list of architecture options; the run configuration adds
the dtype (:class:`ModelConfig`), and the saved model adds the data statistics
(:class:`incerta.models.spec.PotentialSpec`), so defaults and checks live here only.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from incerta.config.schema import Schema

#: documented model sizes: the options each preset sets unless they are given beside it (the
#: accuracy and speed of each on acetylacetone: docs/tutorials/speed.md, benchmarks/accuracy_acac.py)
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"l_max": 1, "num_channels": 32, "num_layers": 3},
    "accurate": {"l_max": 2, "num_channels": 32, "num_layers": 3},
}


class Architecture(Schema):
    """Architecture of the equivariant potential."""

    preset: Literal["fast", "accurate"] | None = Field(
        None, description="a documented model size: fast (l_max 1) or accurate (l_max 2, the defaults); options "
        "given beside it win")
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
                                   "as in the reference data (molecules: tad-dftd3; periodic cells: simple-dftd3)")
    dispersion_three_body: bool = Field(True, description="include D3's three-body (ATM) term; off matches references "
                                        "computed without it and is 10-100x cheaper for periodic cells")

    @model_validator(mode="before")
    @classmethod
    def _preset_sizes(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("preset") in PRESETS:
            return {**PRESETS[values["preset"]], **values}
        return values

    @field_validator("dispersion")
    @classmethod
    def _known_functional(cls, value: str | None) -> str | None:
        if value is not None:
            from dftd3.interface import RationalDampingParam
            from tad_dftd3.param import get_functional_params  # torch only when asked for

            try:
                get_functional_params(value, damping="bj")
                RationalDampingParam(method=value)  # the periodic path's library knows it too
            except (KeyError, ValueError, RuntimeError) as err:
                raise ValueError(f"no D3(BJ) parameters for functional {value!r} ({err})") from err
        return value


class ModelConfig(Architecture):
    """Architecture plus the floating-point precision of the weights."""

    dtype: Literal["float32", "float64"] = "float32"
