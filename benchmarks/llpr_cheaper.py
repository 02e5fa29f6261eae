"""Cheaper LLPR force uncertainties against the exact propagation: how few backward rows rank like it?

Issue 15 asks for LLPR's per-atom force uncertainty at <= 2.5x the bare compiled model,
checked against the exact Jacobian result (Spearman of the two >= 0.95). Compiled, the bare
model costs 2.08 ms on acac and every extra row of the batched backward about 1.2 ms
(``llpr_compiled.json``, 2-core AMD EPYC), so 2.5x leaves room for 2-3 rows. This script measures, on the
fast model of ``speed.py`` with LLPR fitted on its training split (as ``llpr_compiled.py``
does), the per-atom Spearman against the exact propagation (all H last-layer directions) on
acac 300 K and 600 K test frames of

* ``rank k``: the k widest directions of the posterior (k rows);
* ``data rank k``: the k directions of the posterior that carry the most force variance summed
  over the validation structures' atoms (P = F Q_k, F F^T the posterior, Q_k the leading
  eigenvectors of F^T A F with A = sum_ia J_ia J_ia^T; ``LLPRUncertainty.variance_factor``):
  the best k rows on average over those atoms rather than the posterior's widest directions
  (``incerta uq fit --method llpr`` keeps whichever of the two ranks the validation atoms more
  like the exact propagation; k = 8 by default);
* ``samples M``: M last-layer weight draws from the posterior, propagated like an ensemble's
  heads (M rows; one fixed draw, as the method stores it);
* ``stopped at layer L``: all H directions, with each row's backward stopped at the input of
  interaction layer L (the earlier layers' features held fixed): a row then costs a backward
  through the last layers only.

and each one's Spearman against the force error, beside the exact one's.

    .venv/bin/python benchmarks/llpr_cheaper.py     # after speed.py has trained the fast model
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch
from common import INCERTA, WORK, print_table, shared_data, write_results

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph
from incerta.data.io import read_frames
from incerta.models.derivatives import differentiable_inputs, position_jacobian
from incerta.models.predict import graphs_for
from incerta.uq.llpr import LLPRUncertainty, last_layer_terms
from incerta.uq.metrics import spearman
from incerta.uq.store import load_uncertain_potential

RANKS = (1, 2, 4, 8, 12, 16)
SAMPLES = (4, 8, 16)


def fitted_llpr(model: Path, data: Path) -> LLPRUncertainty:
    """LLPR (rank 8) fitted on ``data``'s train / valid split, attached to a copy of ``model``."""
    folder = WORK / "llpr_cheaper" / "model"
    if not (folder / "uncertainty.safetensors").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "potential.safetensors").write_bytes((model / "potential.safetensors").read_bytes())
        subprocess.run([INCERTA, "uq", "fit", folder, "--method", "llpr", "--train", data / "train.xyz",
                        "--val", data / "valid.xyz"], check=True)
    return load_uncertain_potential(folder).eval().method


def stopped_jacobian(method: LLPRUncertainty, graph: AtomicGraph, stop_at: str) -> torch.Tensor:
    """Position Jacobian (N, 3, H) of the summed last-layer features (float64) with the backward
    stopped at the input of block ``stop_at`` (the node features it reads held fixed)."""
    potential = method.potential
    inputs = differentiable_inputs(graph, forces=True, stress=False)
    data = potential.inputs(inputs.graph)
    for name, block in potential.blocks:
        if name == stop_at:
            data[K.NODE_FEATURES] = data[K.NODE_FEATURES].detach()
        data.update(block(data))
    rows = position_jacobian(data[K.LAST_LAYER_FEATURES].sum(0), inputs.positions, batched=True)
    return rows.detach().double().permute(1, 2, 0)


def per_atom_sigma(jacobian: torch.Tensor, projection: torch.Tensor) -> np.ndarray:
    """sqrt(sum_k |J P_k|^2) (N,) for a projection (H, k) of the posterior."""
    return LLPRUncertainty.projected_scores(jacobian, projection).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=WORK / "speed" / "fast", help="folder with the fast model")
    parser.add_argument("--data", type=Path, default=WORK / "accuracy_acac", help="train.xyz / valid.xyz of its training")
    parser.add_argument("--frames", type=int, default=100, help="test frames per temperature")
    args = parser.parse_args()
    torch.set_num_threads(2)
    method = fitted_llpr(args.model, args.data)
    exact = method.posterior_factor()
    draws = torch.randn(exact.shape[0], max(SAMPLES), dtype=exact.dtype, generator=torch.Generator().manual_seed(0))
    layers = [name for name, _ in method.potential.blocks if name.startswith("interactions.")][1:]
    acac = shared_data() / "botnet" / "dataset_acac"
    validation = graphs_for(method.potential, read_frames(args.data / "valid.xyz"))
    validation_jacobian = torch.cat([last_layer_terms(method.potential, g).jacobian for g in validation])
    results, rows = {}, []
    for group in ("300K", "600K"):
        graphs = graphs_for(method.potential, read_frames(acac / f"test_MD_{group}.xyz")[: args.frames])
        terms = [last_layer_terms(method.potential, g) for g in graphs]  # the exact rows, as LLPR has them
        jacobian = torch.cat([t.jacobian for t in terms])
        error = torch.cat([torch.linalg.norm(t.derivatives[K.FORCES].detach() - g.forces, dim=1)
                           for g, t in zip(graphs, terms)]).double().numpy()
        reference = per_atom_sigma(jacobian, exact)
        variants = {f"rank {k}": per_atom_sigma(jacobian, method.posterior_factor(k)) for k in RANKS}
        variants.update({f"data rank {k}": per_atom_sigma(jacobian, method.variance_factor(validation_jacobian, k))
                         for k in RANKS})
        variants.update({f"samples {m}": per_atom_sigma(jacobian, exact @ draws[:, :m] / m**0.5) for m in SAMPLES})
        for layer in layers:
            stopped = torch.cat([stopped_jacobian(method, g, layer) for g in graphs])
            variants[f"stopped at {layer}"] = per_atom_sigma(stopped, exact)
        results[group] = {"exact": {"spearman_vs_error": spearman(reference, error), "rows": exact.shape[1]}}
        for name, sigma in variants.items():
            results[group][name] = {"spearman_vs_exact": spearman(sigma, reference), "spearman_vs_error": spearman(sigma, error)}
        rows += [[group, name, r.get("spearman_vs_exact", 1.0), r["spearman_vs_error"]] for name, r in results[group].items()]
    print_table("LLPR per-atom force uncertainty: cheaper propagations against the exact one (acac, fast model)",
                ["test", "propagation", "Spearman vs exact", "Spearman vs |dF|"], rows)
    write_results("llpr_cheaper", {"model": str(args.model), "frames_per_group": args.frames, "groups": results})


if __name__ == "__main__":
    main()
