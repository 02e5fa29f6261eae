"""Registry of uncertainty methods by name."""

from __future__ import annotations

from incerta.uq.base import UncertaintyMethod
from incerta.uq.combined import CombinedUncertainty
from incerta.uq.ensemble import DeepEnsemble
from incerta.uq.evidential import EvidentialUncertainty
from incerta.uq.gmm import GMMUncertainty
from incerta.uq.gp import LNKUncertainty, SVGPUncertainty
from incerta.uq.llpr import LLPRUncertainty
from incerta.uq.shallow import ShallowEnsemble

METHODS: dict[str, type[UncertaintyMethod]] = {
    cls.name: cls
    for cls in (DeepEnsemble, GMMUncertainty, LLPRUncertainty, EvidentialUncertainty, ShallowEnsemble,
                SVGPUncertainty, LNKUncertainty, CombinedUncertainty)
}
#: Methods attached to a trained model by ``incerta uq fit`` (ensembles come from ``train --ensemble``).
POST_TRAINING = tuple(name for name in METHODS if name != "ensemble")
