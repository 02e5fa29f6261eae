"""Label conventions checked against a model: is each group's shear stress in the order the model reads?

Published stress labels do not always order the three shear components the way their format
says. In the mlearn files (Zuo et al. 2020) the Vacancy and AIMD-NVT cells of Ge, Mo and Si
give yz and xz in each other's place, while their Elastic cells follow VASP's order. Trained
on both, a model learns a contradiction. A model trained on energies and forces alone (its
stress is the exact strain derivative of its energy) settles it: per structure group, the
order of the labels' shear components that matches the model's stress best. The same model
also tells a sign or unit slip: its stress and the labels should agree in scale, so the
least-squares factor taking the labels onto the model's stress (shear and deviatoric normal
components, which a pressure offset of a model not trained on stress leaves alone) is near 1;
-1 points to the opposite sign convention, 0.1 or 10 to kBar against GPa.

Symmetric cells settle the order without any model: a shear component that a cell's point
group fixes at zero (:mod:`incerta.uq.stress_symmetry`) must be zero in its label, so a label
order that puts a nonzero value there is wrong. The mlearn surface cells carry too little
stress for the model to judge, but of the training cells of Ge, Mo and Si whose mirror planes
fix a shear component (6, 5 and 6 of 11, 9 and 12), 5, 2 and 5 hold a nonzero value exactly
there as read, and none with yz and xz swapped: the surfaces are swapped like the AIMD and
vacancy cells. So the orders whose labels break the symmetry of the fewest cells are the
candidates; among them the model decides as above, and where the order as read is among
them it is kept unless another halves its error.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from ase import units

from incerta.data import keys as K
from incerta.data.frame import Frame
from incerta.data.validation import DataError
from incerta.models.potential import Potential
from incerta.models.predict import graphs_for, predict_batches
from incerta.uq.calibration import SHEAR, VOIGT, voigt_components
from incerta.uq.stress_symmetry import free_stress_components

#: the shear components (yz, xz, xy) as (row, column) of a 3x3 stress
SHEAR_PAIRS = VOIGT[3:]
SHEAR_NAMES = ("yz", "xz", "xy")
#: every order the three shear components may have been written in; order[k] is where component k was found
SHEAR_ORDERS = tuple(itertools.permutations(range(3)))
AS_READ = "yz,xz,xy"
#: a group's labels are reordered only where another order at least halves the RMS shear error
REORDER_GAIN = 0.5
#: label scales (see :func:`label_scale`) outside this range are warned about where labels and model
#: correlate at least this well (|r|). Energy-and-force probes of the mlearn elements (5 min each):
#: scales 0.68-1.04 with r >= 0.81 in every AIMD, vacancy and elastic group; the surface groups (and
#: Li's nearly unstrained elastic cells, 0.02 GPa RMS) carry too little stress to judge, r -0.17 to 0.64
PLAUSIBLE_SCALE = (0.5, 2.0)
MIN_CORRELATION = 0.8
#: a label component above this (GPa) is not zero: VASP writes stress to 0.01 kBar, 1e-3 GPa
LABEL_ZERO_GPA = 2e-3


def order_name(order: Sequence[int]) -> str:
    """(1, 0, 2) -> 'xz,yz,xy': for yz, xz and xy in turn, the place of the labels it was found in."""
    return ",".join(SHEAR_NAMES[k] for k in order)


def reorder_shear(stress: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Stress (..., 3, 3) whose shear component k (yz, xz, xy) is the one found at ``order[k]``."""
    result = np.array(stress, dtype=float, copy=True)
    for k, source in enumerate(order):
        (i, j), (a, b) = SHEAR_PAIRS[k], SHEAR_PAIRS[source]
        result[..., i, j] = result[..., j, i] = stress[..., a, b]
    return result


def frame_group(frame: Frame, key: str | None) -> str:
    """The group a frame belongs to: ``frame.info[key]`` (``key`` None: the mlearn ``group``,
    else extended XYZ's ``config_type``, else one group 'all')."""
    if key is not None:
        return str(frame.info.get(key, "all"))
    return str(frame.info.get("group", frame.info.get("config_type", "all")))


def model_stress(potential: Potential, frames: Sequence[Frame]) -> np.ndarray:
    """The model's stress of each frame, (B, 3, 3) in eV/Å^3 (NaN for molecules), in batches."""
    stresses = []
    for batch, outputs in predict_batches(potential, graphs_for(potential, list(frames))):
        stress = outputs.get(K.STRESS, torch.full((batch.num_graphs, 3, 3), torch.nan))
        stresses.append(torch.where(batch.pbc.any(dim=-1)[:, None, None], stress, torch.nan).double().numpy())
    return np.concatenate(stresses)


def shear_order_check(predicted: np.ndarray, frames: Sequence[Frame], group_key: str | None = None) -> dict[str, dict]:
    """Per group of the ``frames`` with stress labels, the RMS shear error (GPa) of ``predicted``
    stresses ((B, 3, 3) eV/Å^3, one per frame) against the labels read in each order of their
    shear components, and the number of cells whose symmetry each order's labels break (a
    nonzero value where the cell's point group fixes a shear component at zero). The chosen
    order breaks the symmetry of the fewest cells; among those, the best by the model where it at
    least halves the error of the labels as read (or where those break more symmetry), else
    the order as read: {group: {"structures", "rms_error_GPa": {order: x}, "symmetric_cells",
    "symmetry_violations": {order: n}, "chosen"}} (orders named like 'xz,yz,xy')."""
    labelled = [k for k, frame in enumerate(frames) if frame.stress is not None]
    if not labelled:
        first = f" (first: {frames[0].source})" if frames else ""
        raise DataError(f"none of the {len(frames)} frames{first} has a stress label: there is nothing to check")
    reference = np.stack([frames[k].stress for k in labelled]) / units.GPa
    predicted = np.asarray(predicted)[labelled] / units.GPa
    fixed = np.stack([_fixed_shear(frames[k]) for k in labelled])
    groups = np.array([frame_group(frames[k], group_key) for k in labelled])
    check = {}
    for group in sorted(set(groups)):
        rows = groups == group
        model = voigt_components(predicted[rows])[:, SHEAR]
        errors, violations = {}, {}
        for order in SHEAR_ORDERS:
            labels = voigt_components(reorder_shear(reference[rows], order))[:, SHEAR]
            errors[order_name(order)] = float(np.sqrt(np.mean((model - labels) ** 2)))
            violations[order_name(order)] = int(((np.abs(labels) > LABEL_ZERO_GPA) & fixed[rows]).any(axis=1).sum())
        fewest = min(violations.values())
        best, lowest = min(((name, error) for name, error in errors.items() if violations[name] == fewest),
                           key=lambda item: item[1])
        keep = violations[AS_READ] == fewest and not lowest < REORDER_GAIN * errors[AS_READ]
        check[str(group)] = {"structures": int(rows.sum()), "rms_error_GPa": errors,
                             "symmetric_cells": int(fixed[rows].any(axis=1).sum()), "symmetry_violations": violations,
                             "chosen": AS_READ if keep else best}
    return check


def _fixed_shear(frame: Frame) -> np.ndarray:
    """The shear components (3,) bool the point group of a fully periodic frame fixes at zero."""
    if not np.all(frame.pbc):
        return np.zeros(3, dtype=bool)
    return ~free_stress_components(frame.cell, frame.positions, frame.numbers)[3:]


def checked_frames(frames: Sequence[Frame], check: dict[str, dict], group_key: str | None = None) -> list[Frame]:
    """``frames`` with each group's shear stress components in the order ``check`` chose: new
    frames where it reorders, the same frames elsewhere (no stress, order as read, group unseen)."""
    orders = {group: tuple(SHEAR_NAMES.index(name) for name in entry["chosen"].split(","))
              for group, entry in check.items() if entry["chosen"] != AS_READ}
    result = []
    for frame in frames:
        order = orders.get(frame_group(frame, group_key))
        result.append(frame if frame.stress is None or order is None else
                      replace(frame, stress=reorder_shear(np.asarray(frame.stress), order)))
    return result


def label_scale(predicted: np.ndarray, frames: Sequence[Frame], group_key: str | None = None) -> dict[str, dict]:
    """Per group, the least-squares factor taking the stress labels of ``frames`` onto the
    ``predicted`` stresses ((B, 3, 3), one per frame), and the Pearson correlation of the two,
    over the three shear and the three deviatoric normal components (each normal minus the mean
    of the three) of every labelled frame: {group: {"scale", "correlation"}}. The scale is near 1
    where labels and model share units and sign; it says something only where the correlation is
    strong (:data:`MIN_CORRELATION`). Check the shear order first (:func:`checked_frames`)."""
    parts: dict[str, list] = {}
    for k, frame in enumerate(frames):
        if frame.stress is not None:
            pair = [_pressure_free_components(np.asarray(frame.stress)), _pressure_free_components(np.asarray(predicted[k]))]
            parts.setdefault(frame_group(frame, group_key), []).append(pair)
    result = {}
    for group, pairs in sorted(parts.items()):
        labels, model = (np.concatenate(side) for side in zip(*pairs))
        with np.errstate(divide="ignore", invalid="ignore"):  # labels or model all zero: NaN, judged unreadable
            result[group] = {"scale": float(labels @ model / (labels @ labels)),
                             "correlation": float(np.corrcoef(labels, model)[0, 1])}
    return result


def implausible_scales(fits: dict[str, dict]) -> dict[str, float]:
    """The groups of :func:`label_scale` whose labels look like a sign or unit slip: scale outside
    :data:`PLAUSIBLE_SCALE` where the correlation is strong enough to judge ({group: scale})."""
    low, high = PLAUSIBLE_SCALE
    return {group: fit["scale"] for group, fit in fits.items()
            if abs(fit["correlation"]) >= MIN_CORRELATION and not low <= fit["scale"] <= high}


def _pressure_free_components(stress: np.ndarray) -> np.ndarray:
    """The shear and the deviatoric normal components (6,) of a 3x3 stress."""
    normal = np.diag(stress)
    return np.concatenate([voigt_components(stress)[SHEAR], normal - normal.mean()])
