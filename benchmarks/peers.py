"""Peer codes (MACE, NequIP) in their own virtual environments, never in the project's .venv.

``python benchmarks/peers.py mace`` creates ``benchmarks/.venvs/mace`` with the same
torch==2.13.0 CPU wheel and ``mace-torch`` (which pins its own e3nn); ``peers.py nequip`` the
same with NequIP 0.19.1 (Lightning, Hydra, e3nn 0.6), used by ``nequip_peer.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import venv
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
#: nequip 0.19.1 has the fix its compile needs on torch >= 2.13 (nequip issue #609); the rest is what it resolved
PACKAGES = {"mace": ["mace-torch==0.3.16"],
            "nequip": ["nequip==0.19.1", "lightning==2.6.6", "hydra-core==1.3.8", "omegaconf==2.3.1", "e3nn==0.6.0",
                       "torchmetrics==1.9.0"]}


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
