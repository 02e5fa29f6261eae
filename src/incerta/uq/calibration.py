"""Recalibration: raw uncertainty scores -> predicted errors in eV/Å and eV.

Fitted on validation data, applied to any method's raw scores. Statistical model:
the force error on atom i is a 3-D Gaussian whose vector RMS is sigma_i (each component
has standard deviation sigma_i / sqrt 3); a structure's energy error has standard
deviation sigma_E.

Maps (``kind``):

* ``scale``: sigma = a * u, the NLL-optimal scale factor (closed form); for scores that
  are already standard deviations in some unit (ensembles, LLPR, GP, evidential).
* ``power``: sigma = exp(c0 + c1 * t(u)), two parameters fitted by NLL minimisation,
  with t(u) = log u for standard-deviation-like scores, and for log-density scores (GMM
  negative log-likelihoods, which grow like a squared distance)
  t(u) = log softplus(u - u0), u0 the lowest calibration score: a power law in the excess
  NLL (about a Mahalanobis distance for c1 = 1/2) that grows polynomially, not
  exponentially, far from the data. For log-density scores c1 is at least
  ``MIN_DISTANCE_EXPONENT`` = 1/2: sigma grows at least like the latent distance. A free fit
  on validation frames drawn near the training data comes out flatter (regression dilution:
  the noisy score spans only a narrow range there) and under-estimates the error of shifted
  structures. Measured on the GMM models of the exploration benchmark (acac, aspirin; 20
  frames at 300 K, 5 of them for validation): fitted c1 0.14-0.36 gave RMS sigma / RMS error
  0.47-0.74 on 1200 K MD; c1 = 1/2 gave 0.69-1.38 from 300 to 1200 K.
* ``isotonic``: sigma^2 = monotone fit of the squared error against u (scikit-learn);
  flexible but flat beyond the range of validation scores.
* ``conformal``: the shape of ``scale`` (std-like scores) or ``power`` (log-density scores),
  with the factor set by split-conformal prediction instead of the likelihood: the
  finite-sample ``CONFORMAL_LEVEL`` quantile of |error| / shape, divided by the radius that
  holds that fraction of a Gaussian error. Whatever the error distribution, the intervals
  |error| <= r sigma hold for at least that fraction of new data drawn like the validation
  data (per element when the maps are per element); heavy tails make sigma larger than the
  likelihood fit does.

Stress: every method's calibrated per-atom force uncertainties sigma_i give one raw stress
score per periodic structure, u = sqrt(sum_i sigma_i^2) / V^(2/3) (eV/Å^3: the virial
(1/V) sum_i r_i x dF_i with |r_i| ~ V^(1/3)), mapped by two power laws fitted to the stress
errors of periodic validation structures: one for the normal components (xx, yy, zz), one
for the shear components (yz, xz, xy), so sigma is per Voigt component. They err
differently: a pressure error moves the three normal components together, and cubic
crystals near equilibrium have no shear stress at all. Measured on the mlearn test sets
(``benchmarks/materials.py``, GMM): RMS normal / shear errors 0.59 / 0.19 GPa (Si), 0.33 /
0.09 (Ge), 0.76 / 0.31 (Mo); one map for all six components gave miscalibration areas of
0.147, 0.141 and 0.125, the two maps 0.115, 0.113 and 0.109 (Li: 0.062 against 0.043).
Components a cell's symmetry fixes at zero (:mod:`incerta.uq.stress_symmetry`) are exact:
they are left out of the fit and their sigma is zero.
Without enough such structures there is no stress map and no stress uncertainty. Methods
made of members (deep ensemble, shallow heads) give a score of their own instead, the spread
of their members' stresses (``UncertainOutput.stress_score``), and their maps read that.

Force maps are fitted per element when the validation data hold at least
``MIN_ATOMS_PER_SPECIES`` atoms of it (one global map otherwise, and for elements the
calibration never saw): force errors differ by element (hydrogen's are smaller), and a
raw score need not order elements the way their errors do. Measured on acac with the
localised neural kernel, whose energy-variance score is largest on hydrogen: per-atom
Spearman of uncertainty vs force error -0.08 with one map, positive per element.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from incerta.config.uncertainty import CalibrationKind

ScoreKind = Literal["std", "log-density"]
MIN_ATOMS_PER_SPECIES = 50
#: the least exponent of a power map on log-density scores (sigma ~ latent distance)
MIN_DISTANCE_EXPONENT = 0.5
#: coverage of the conformal intervals
CONFORMAL_LEVEL = 0.9
#: periodic validation structures with stress labels needed for a stress map
MIN_STRESS_STRUCTURES = 10
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))
#: the normal and the shear components of :data:`VOIGT` (each kind has its own stress map)
NORMAL, SHEAR = slice(0, 3), slice(3, 6)
_VOIGT_ROWS, _VOIGT_COLUMNS = (list(index) for index in zip(*VOIGT))


def voigt_components(stress):
    """The six Voigt components (..., 6), in :data:`VOIGT` order, of stresses (..., 3, 3) (a
    NumPy array or a tensor, returned as such)."""
    return stress[..., _VOIGT_ROWS, _VOIGT_COLUMNS]


def stress_score(atom_sigma: torch.Tensor, batch: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """Raw stress score (B,) eV/Å^3 from calibrated per-atom force uncertainties (N,) eV/Å,
    the structure of each atom (N,) and the cell volumes (B,) Å^3."""
    volume = volume.to(atom_sigma.dtype)
    squared = torch.zeros_like(volume).index_add(0, batch, atom_sigma.pow(2))
    return squared.sqrt() / volume.pow(2.0 / 3.0)


@dataclass
class ScoreMap:
    """One fitted map from raw scores to sigma (see module docstring)."""

    kind: CalibrationKind
    score_kind: ScoreKind
    c0: float = 0.0
    c1: float = 1.0
    offset: float = 0.0
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)

    def transform(self, score: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """t(u): log u for std-like scores, log softplus(u - u0) for log-density scores."""
        if not isinstance(score, torch.Tensor):
            return self.transform(torch.as_tensor(np.asarray(score, dtype=float))).numpy()
        return transform_score(score, self.score_kind == "log-density", self.offset)

    def knots(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The isotonic knots (x, y) as tensors with the dtype and device of ``like`` (empty otherwise)."""
        as_t = lambda values: torch.tensor(values, dtype=like.dtype, device=like.device)
        return as_t(self.knots_x), as_t(self.knots_y)

    def __call__(self, score: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """sigma for raw ``score`` (any shape); differentiable for torch tensors."""
        if not isinstance(score, torch.Tensor):
            return self(torch.as_tensor(np.asarray(score, dtype=float))).numpy()
        isotonic = self.kind == "isotonic"
        knots = self.knots(score) if isotonic else (score[:0], score[:0])  # unread by the power law
        return map_score(score, isotonic, self.score_kind == "log-density", self.c0, self.c1, self.offset, *knots)


@dataclass
class StressMaps:
    """Maps of the stress score (B,) eV/Å^3 to the RMS error of the normal (xx, yy, zz) and of
    the shear (yz, xz, xy) stress components (each fitted on the sum of its three squares).
    ``score``: which score they read, ``forces`` (:func:`stress_score` of the calibrated force
    uncertainties) or ``method`` (the method's own, e.g. the spread of its members' stresses)."""

    normal: ScoreMap
    shear: ScoreMap
    score: Literal["forces", "method"] = "forces"

    def __call__(self, score: torch.Tensor) -> torch.Tensor:
        """Per-component sigma (B, 6) eV/Å^3 in Voigt order for raw stress scores (B,)."""
        return voigt_sigma(self.normal(score), self.shear(score))

    def to_dict(self) -> dict:
        return {"normal": asdict(self.normal), "shear": asdict(self.shear), "score": self.score}

    @classmethod
    def from_dict(cls, data: dict) -> StressMaps:
        """Both maps, or one map of all six components (files written before the split) used for
        both; files written before method scores read the force-derived score."""
        if "normal" in data:
            return cls(ScoreMap(**data["normal"]), ScoreMap(**data["shear"]), data.get("score", "forces"))
        six = ScoreMap(**data)  # it predicted the RMS of six components: the same per component from three
        three = replace(six, c0=six.c0 - 0.5 * math.log(2.0), knots_y=[y / 2.0 for y in six.knots_y])
        return cls(three, three)


def voigt_sigma(normal: torch.Tensor, shear: torch.Tensor) -> torch.Tensor:
    """Per-component stress sigma (B, 6) in Voigt order from the RMS errors (B,) of the three
    normal and of the three shear components (TorchScript-compatible, for exported models)."""
    normal, shear = normal / math.sqrt(3.0), shear / math.sqrt(3.0)
    return torch.stack([normal, normal, normal, shear, shear, shear], dim=-1)


def transform_score(score: torch.Tensor, log_density: bool, offset: float) -> torch.Tensor:
    """t(u) of :class:`ScoreMap` (TorchScript-compatible, for exported models)."""
    if not log_density:
        return score.clamp_min(1e-30).log()
    return torch.nn.functional.softplus(score - offset).clamp_min(1e-30).log()


def map_score(score: torch.Tensor, isotonic: bool, log_density: bool, c0: float, c1: float, offset: float,
              knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """sigma of :class:`ScoreMap` for raw ``score`` (TorchScript-compatible, for exported models)."""
    if isotonic:
        return _interpolate(score, knots_x, knots_y).clamp_min(1e-30).sqrt()
    return torch.exp(c0 + c1 * transform_score(score, log_density, offset))


def _interpolate(value: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through (x, y), constant beyond the ends (like np.interp)."""
    if len(x) == 1:
        return y.expand_as(value).clone()
    clamped = value.clamp(x[0], x[-1])
    right = torch.searchsorted(x, clamped.contiguous()).clamp(1, len(x) - 1)
    x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
    weight = ((clamped - x0) / (x1 - x0).clamp_min(1e-30)).clamp(0, 1)
    return y0 + weight * (y1 - y0)


def _fit(score: np.ndarray, squared: np.ndarray, dof: int, kind: CalibrationKind, score_kind: ScoreKind) -> ScoreMap:
    """Fit sigma(score) to squared errors (sum over ``dof`` components, each with var sigma^2/dof)."""
    from scipy.optimize import minimize  # fitting only: inference (MD, the calculator) does not load them
    from scipy.stats import chi2
    from sklearn.isotonic import IsotonicRegression

    result = ScoreMap(kind, score_kind, offset=float(np.min(score)) if score_kind == "log-density" else 0.0)
    t = result.transform(score)
    if kind == "isotonic":
        iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(score, squared)
        result.knots_x, result.knots_y = iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist()
        return result
    if kind == "scale":
        result.c0 = 0.5 * float(np.log(np.mean(squared / np.exp(2 * t))))
        return result
    if kind == "conformal":
        shape = _fit(score, squared, dof, "scale" if score_kind == "std" else "power", score_kind)
        ratio = np.sqrt(squared) / np.exp(shape.c1 * t)
        level = min(1.0, np.ceil((len(ratio) + 1) * CONFORMAL_LEVEL) / len(ratio))
        radius = np.sqrt(chi2.ppf(CONFORMAL_LEVEL, dof) / dof)  # |e| / sigma at that level for Gaussian errors
        result.c0, result.c1 = float(np.log(np.quantile(ratio, level) / radius)), shape.c1
        return result

    def nll(c: np.ndarray) -> float:
        log_sigma = c[0] + c[1] * t
        return float(np.mean(dof * log_sigma + 0.5 * dof * squared * np.exp(-2 * log_sigma)))

    start = np.array([0.5 * np.log(np.mean(squared)) - np.mean(t), 1.0])
    least_c1 = MIN_DISTANCE_EXPONENT if score_kind == "log-density" else None
    best = minimize(nll, start, method="Nelder-Mead", bounds=[(None, None), (least_c1, None)],
                    options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    result.c0, result.c1 = float(best.x[0]), float(best.x[1])
    return result


@dataclass
class Calibration:
    """Maps for per-atom force uncertainty (eV/Å), per-structure energy uncertainty (eV) and,
    where periodic validation data had stress, per-component stress uncertainty (eV/Å^3).

    ``forces`` is the global force map; ``forces_by_species`` holds per-element maps
    (atomic number -> map) that take precedence where present; ``stress`` maps
    :func:`stress_score` to the normal and shear stress errors (None: no stress map).
    """

    forces: ScoreMap
    energy: ScoreMap
    forces_by_species: dict[int, ScoreMap] = field(default_factory=dict)
    stress: StressMaps | None = None
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        atom_scores: np.ndarray,
        force_errors: np.ndarray,
        energy_scores: np.ndarray,
        energy_errors: np.ndarray,
        score_kind: ScoreKind = "std",
        kind: CalibrationKind | None = None,
        numbers: np.ndarray | None = None,
    ) -> Calibration:
        """Fit on validation scores and errors: force errors (N, 3) eV/Å, energy errors (B,) eV;
        ``numbers`` (N,) atomic numbers enable per-element force maps."""
        kind = kind or ("scale" if score_kind == "std" else "power")
        atom_scores = np.asarray(atom_scores, dtype=float)
        force_sq = np.sum(np.square(np.asarray(force_errors, dtype=float).reshape(-1, 3)), axis=1)
        energy_sq = np.square(np.asarray(energy_errors, dtype=float))
        by_species = {}
        if numbers is not None:
            numbers = np.asarray(numbers)
            for z in np.unique(numbers):
                mask = numbers == z
                if mask.sum() >= MIN_ATOMS_PER_SPECIES:
                    by_species[int(z)] = _fit(atom_scores[mask], force_sq[mask], 3, kind, score_kind)
        return cls(
            forces=_fit(atom_scores, force_sq, 3, kind, score_kind),
            energy=_fit(np.asarray(energy_scores, dtype=float), energy_sq, 1, kind, score_kind),
            forces_by_species=by_species,
        )

    def fit_stress(self, atom_scores: np.ndarray, numbers: np.ndarray, structure: np.ndarray, volume: np.ndarray,
                   stress_errors: np.ndarray, method_scores: np.ndarray | None = None,
                   free: np.ndarray | None = None) -> None:
        """Fit the stress map on periodic structures: per-atom raw scores (N,), atomic numbers
        (N,), structure index of each atom (N,), volumes (B,) Å^3 (NaN for molecules) and
        stress errors (B, 3, 3) eV/Å^3 (NaN where unknown). With the method's own raw stress
        scores (B,) eV/Å^3 the maps read those; otherwise the score of the calibrated force
        uncertainties. ``free`` (B, 6) bool: the Voigt components each cell's symmetry leaves
        free (:mod:`incerta.uq.stress_symmetry`; default all): the others are exact zeros and
        are left out of the fit. Too few such structures: no map; too few free shear components
        (every validation cell cubic, say): the shear components take the normal map."""
        errors = np.asarray(stress_errors, dtype=float).reshape(-1, 3, 3)
        usable = np.isfinite(errors).all(axis=(1, 2)) & np.isfinite(volume)
        if usable.sum() < MIN_STRESS_STRUCTURES:
            self.stress = None
            return
        if method_scores is not None:
            score = np.asarray(method_scores, dtype=float)[usable]
        else:
            sigma = self.atom_sigma(torch.as_tensor(atom_scores, dtype=torch.float64), torch.as_tensor(numbers))
            score = stress_score(sigma, torch.as_tensor(structure, dtype=torch.long),
                                 torch.as_tensor(volume)).numpy()[usable]  # NaN for molecules
        squared = voigt_components(errors[usable]) ** 2
        free = np.ones(squared.shape, dtype=bool) if free is None else np.asarray(free, dtype=bool)[usable]

        def fitted(part: slice) -> ScoreMap | None:
            """The map of one kind of component; each free one is an observation of sigma^2 / 3
            (sigma: the RMS error of the three); None with too few."""
            rows, columns = np.nonzero(free[:, part])
            if len(rows) < MIN_STRESS_STRUCTURES:
                return None
            return _fit(score[rows], 3.0 * squared[:, part][rows, columns], 1, "power", "std")

        normal = fitted(NORMAL)  # never fixed by symmetry (the identity keeps them), so always fitted here
        shear = fitted(SHEAR)
        self.stress = StressMaps(normal, normal if shear is None else shear,
                                 score="forces" if method_scores is None else "method")

    def stress_sigma(self, atom_sigma: torch.Tensor, batch: torch.Tensor, volume: torch.Tensor,
                     method_score: torch.Tensor | None = None) -> torch.Tensor:
        """Per-component stress uncertainty (B, 6) eV/Å^3, Voigt order, from per-atom force
        uncertainties (N,) eV/Å, the structure of each atom (N,) and cell volumes (B,) Å^3, or
        from the method's own raw stress score (B,) eV/Å^3 where the maps were fitted on it."""
        if self.stress.score == "forces":
            return self.stress(stress_score(atom_sigma, batch, volume))
        if method_score is None:
            raise ValueError("this stress calibration reads the method's own stress score, which was not given")
        return self.stress(method_score)

    def atom_sigma(self, scores: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Per-atom force uncertainty (N,) eV/Å from raw scores (N,) of atoms with ``numbers`` (N,)."""
        if self.forces.kind != "isotonic":  # exp(c0 + c1 t(u)) with each atom's element's parameters
            c0, c1, offset = self._parameters(scores)[numbers].unbind(-1)
            return torch.exp(c0 + c1 * transform_score(scores - offset, self.forces.score_kind == "log-density", 0.0))
        sigma = self.forces(scores)
        for z, score_map in self.forces_by_species.items():  # no test on the data: a compiled package traces this
            sigma = torch.where(numbers == z, score_map(scores), sigma)
        return sigma

    def _parameters(self, like: torch.Tensor) -> torch.Tensor:
        """(119, 3) table of (c0, c1, offset) by atomic number: the element's map where there is
        one, the global map otherwise (dtype and device of ``like``, made once per pair)."""
        key = (like.dtype, like.device)
        if key not in self._tables:
            rows = [self.forces_by_species.get(z, self.forces) for z in range(119)]
            self._tables[key] = torch.tensor([[m.c0, m.c1, m.offset] for m in rows], dtype=like.dtype,
                                             device=like.device)
        return self._tables[key]

    def to_json(self) -> str:
        return json.dumps({"forces": asdict(self.forces), "energy": asdict(self.energy),
                           "forces_by_species": {str(z): asdict(m) for z, m in self.forces_by_species.items()},
                           "stress": self.stress.to_dict() if self.stress is not None else None})

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        by_species = {int(z): ScoreMap(**m) for z, m in data.get("forces_by_species", {}).items()}
        stress = StressMaps.from_dict(data["stress"]) if data.get("stress") else None
        return cls(forces=ScoreMap(**data["forces"]), energy=ScoreMap(**data["energy"]), forces_by_species=by_species,
                   stress=stress)
