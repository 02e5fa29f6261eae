"""Peer codes (MACE, NequIP) in their own virtual environments, never in the project's .venv.

``python benchmarks/peers.py mace`` creates ``benchmarks/.venvs/mace`` with the same
torch==2.13.0 CPU wheel and ``mace-torch`` (which pins its own e3nn).
"""

from __future__ import annotations

import argparse
import subprocess
import venv
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
PACKAGES = {"mace": ["mace-torch==0.3.16"], "nequip": ["nequip==0.19.1"]}


def peer_python(name: str) -> Path:
    """Python of the peer's venv, created (torch first) when missing."""
    root = VENVS / name
    python = root / "bin" / "python"
    marker = root / ".installed"
    if not marker.exists():
        venv.create(root, with_pip=True, clear=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "torch==2.13.0"], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *PACKAGES[name]], check=True)
        marker.touch()
    return python


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peers", nargs="*", choices=sorted(PACKAGES), default=["mace"], help="peer venvs to create")
    for name in parser.parse_args().peers:
        print(name, peer_python(name))
