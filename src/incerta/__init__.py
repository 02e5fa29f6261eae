"""incerta: equivariant interatomic potentials that know when they do not know."""

from incerta.utils.version import __version__

__all__ = ["IncertaCalculator", "__version__"]


def __getattr__(name: str):
    if name == "IncertaCalculator":
        from incerta.calculators.ase import IncertaCalculator

        return IncertaCalculator
    raise AttributeError(f"module 'incerta' has no attribute {name!r}")
