"""The embedded default data set: ethanol labelled with GFN2-xTB (tblite).

Train at 300 K; test at 300, 600 and 1200 K (a temperature shift, as in the 3BPA
benchmark). Made by ``python -m incerta.data.default`` (see README.md here); the
files ship inside the package so the demo needs no download.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FILES = {
    "train": "ethanol_xtb_train_300K.xyz.gz",
    "test_300K": "ethanol_xtb_test_300K.xyz.gz",
    "test_600K": "ethanol_xtb_test_600K.xyz.gz",
    "test_1200K": "ethanol_xtb_test_1200K.xyz.gz",
    "isolated_atoms": "ethanol_xtb_isolated_atoms.xyz.gz",
}


def path(name: str) -> Path:
    """Path of one embedded file by its key in ``FILES``."""
    return Path(str(resources.files(__name__).joinpath(FILES[name])))
