"""The registry of uncertainty methods: every name gives its class, and heavy libraries load only
for the methods (and the fitting) that need them."""

from __future__ import annotations

import subprocess
import sys

from incerta.uq.base import UncertaintyMethod
from incerta.uq.methods import METHODS, POST_TRAINING


def test_every_name_gives_the_class_of_that_name():
    assert len(METHODS) == 8 and "ensemble" not in POST_TRAINING
    for name, cls in METHODS.items():
        assert issubclass(cls, UncertaintyMethod) and cls.name == name
    from incerta.uq.combined import ERROR_METHODS

    assert set(ERROR_METHODS) <= set(METHODS) - {"combined", "gmm", "ensemble"}


def test_inference_does_not_load_the_fitting_libraries():
    """Importing the calculator loads neither GPyTorch, scikit-learn nor torch-pme (about 100 MB
    of every MD process); looking up a GP method does load GPyTorch."""
    heavy = ("gpytorch", "sklearn", "torchpme", "metatensor")
    script = ("import sys; import incerta.calculators.ase; from incerta.uq.methods import METHODS; "
              f"print([m for m in {heavy!r} if m in sys.modules]); METHODS['lnk']; print('gpytorch' in sys.modules)")
    lines = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()
    assert lines == ["[]", "True"], lines
