"""Registry of uncertainty methods by name.

A method's module is imported when the method is first looked up, so loading a model with a
GMM attached does not load GPyTorch or scikit-learn (about 100 MB and a second per process).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from incerta.uq.base import UncertaintyMethod

#: method name -> "module:class" of its implementation
METHOD_CLASSES = {
    "ensemble": "incerta.uq.ensemble:DeepEnsemble",
    "gmm": "incerta.uq.gmm:GMMUncertainty",
    "llpr": "incerta.uq.llpr:LLPRUncertainty",
    "ledl": "incerta.uq.evidential:EvidentialUncertainty",
    "shallow": "incerta.uq.shallow:ShallowEnsemble",
    "svgp": "incerta.uq.gp:SVGPUncertainty",
    "lnk": "incerta.uq.gp:LNKUncertainty",
    "combined": "incerta.uq.combined:CombinedUncertainty",
}


class MethodRegistry(Mapping[str, type[UncertaintyMethod]]):
    """Read-only mapping from a method's name to its class, importing the class on first use."""

    def __getitem__(self, name: str) -> type[UncertaintyMethod]:
        module, _, cls = METHOD_CLASSES[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(METHOD_CLASSES)

    def __len__(self) -> int:
        return len(METHOD_CLASSES)


METHODS = MethodRegistry()
#: Methods attached to a trained model by ``incerta uq fit`` (ensembles come from ``train --ensemble``).
POST_TRAINING = tuple(name for name in METHODS if name != "ensemble")
