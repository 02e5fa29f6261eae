"""What LLPR would cost compiled: its whole check in one AOTInductor program, against the bare package.

LLPR's per-atom force uncertainty needs, besides the forces, the position Jacobian of the k = 8
projected last-layer features: 8 more rows of the backward pass. This script compiles that
check (energy, forces, raw scores and calibrated uncertainties) with ``compile_potential``'s
``predictor`` and times it, calls alternating with the bare compiled model on one acac
structure (2 threads, float32, medians), in two forms:

* ``batched``: the 9 rows as one batched backward (``torch.func.vmap`` over the
  vector-Jacobian products). Tracing it with dynamic sizes needs batching rules that keep
  sizes symbolic (PyTorch's own for index_add, index_select and slice_backward fix them to
  the example's numbers), given here for the trace only, and e3nn's Gate without its in-place
  Extract (whose backward under vmap also fixes the sizes): the gate's three parts are
  contiguous slices of its input, taken as views.
* ``unrolled``: 9 backward passes one after the other in the program.

It answers whether compiling LLPR reaches the issue's target (<= 2.5x the bare compiled model).
The library does not ship this program: see the results for why.

    .venv/bin/python benchmarks/llpr_compiled.py     # after speed.py has trained and compiled the fast model
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from functools import partial
from pathlib import Path

import torch
from common import INCERTA, WORK, alternating_medians, print_table, write_results
from e3nn import o3
from torch import nn

from incerta.data import keys as K
from incerta.data.graph import frame_to_graph
from incerta.data.io import read_frames
from incerta.models.compiled import CompiledPotential, compile_potential
from incerta.models.derivatives import differentiable_inputs, position_jacobian
from incerta.uq.store import load_uncertain_potential


def _front(tensor: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``tensor``'s batch dimension first (an unbatched one expanded to ``size``)."""
    return tensor.movedim(dim, 0) if dim is not None else tensor.unsqueeze(0).expand(size, *tensor.shape)


def _index_add(info, in_dims, target, dim, index, source, alpha=1):
    if in_dims[2] is not None:
        raise NotImplementedError("index_add with a batched index")
    dim = dim % max(source.dim() - (in_dims[3] is not None), 1)
    source = _front(source, in_dims[3], info.batch_size)
    return _front(target, in_dims[0], info.batch_size).index_add(dim + 1, index, source, alpha=alpha), 0


def _index_select(info, in_dims, source, dim, index):
    if in_dims[2] is not None:
        raise NotImplementedError("index_select with a batched index")
    return source.movedim(in_dims[0], 0).index_select(dim % max(source.dim() - 1, 1) + 1, index), 0


def _slice_backward(info, in_dims, grad, sizes, dim, start, end, step):
    grad = grad.movedim(in_dims[0], 0)
    return torch.ops.aten.slice_backward(grad, [info.batch_size, *sizes], dim % len(sizes) + 1, start, end, step), 0


@contextlib.contextmanager
def symbolic_batching_rules():
    """vmap rules that keep the atoms' and edges' numbers symbolic, while the block runs."""
    library = torch.library.Library("aten", "IMPL")
    try:
        for name, rule in (("aten::index_add", _index_add), ("aten::index_select", _index_select),
                           ("aten::slice_backward", _slice_backward)):
            torch.library.register_vmap(name, rule, lib=library)
        yield
    finally:
        library._destroy()


class GateParts(nn.Module):
    """A gate's scalars, gates and gated features as views of its input (their dims in order)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.sizes = sizes

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        starts = [sum(self.sizes[:k]) for k in range(len(self.sizes))]
        return tuple(features.narrow(-1, start, size) for start, size in zip(starts, self.sizes))


def slice_gates(potential: nn.Module) -> None:
    """Give every e3nn Gate of ``potential`` :class:`GateParts` in place of its Extract (same values)."""
    for module in potential.modules():
        if type(module).__name__ == "Gate":
            parts = module.sc.irreps_outs
            if sum(parts, o3.Irreps()).sort().irreps != sum(parts, o3.Irreps()):
                raise ValueError("the gate's parts are not in the order of its input")
            module.sc = GateParts([irreps.dim for irreps in parts])


def llpr_check(uncertain, batched: bool):
    """LLPR's check as a traceable predictor: energy, forces, per-atom energies, features and raw scores."""
    method = uncertain.method

    def predict(graph, stress, species):
        inputs = differentiable_inputs(graph, forces=True, stress=False)
        out = method.potential.evaluate(inputs.graph, species)
        phi = out[K.LAST_LAYER_FEATURES]
        values = torch.cat([out[K.ENERGY].sum().unsqueeze(0), phi.sum(0) @ method.projection.to(phi.dtype)])
        rows = position_jacobian(values, inputs.positions, batched=batched)
        g = torch.zeros(graph.num_graphs, phi.shape[1] + 1, dtype=phi.dtype, device=phi.device).index_add(
            0, graph.batch, torch.cat([phi, torch.ones_like(phi[:, :1])], dim=1)).double()
        return {K.ENERGY: out[K.ENERGY].detach(), K.FORCES: -rows[0], K.ATOMIC_ENERGIES: out[K.ATOMIC_ENERGIES].detach(),
                K.NODE_FEATURES: out[K.NODE_FEATURES], K.ATOM_SCORE: rows[1:].double().pow(2).sum(dim=(0, 2)).sqrt(),
                K.ENERGY_SCORE: ((g @ method.inverse) * g).sum(1).clamp_min(0).sqrt()}

    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=WORK / "speed" / "fast", help="folder with the compiled bare model")
    parser.add_argument("--data", type=Path, default=WORK / "accuracy_acac", help="train.xyz / valid.xyz of its training")
    parser.add_argument("--forms", nargs="+", default=["batched", "unrolled"], choices=["batched", "unrolled"])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = WORK / "llpr_compiled" / "model"
    if not (folder / "uncertainty.safetensors").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "potential.safetensors").write_bytes((args.model / "potential.safetensors").read_bytes())
        subprocess.run([INCERTA, "uq", "fit", folder, "--method", "llpr", "--train", args.data / "train.xyz",
                        "--val", args.data / "valid.xyz"], check=True)
    uncertain = load_uncertain_potential(folder).eval()
    slice_gates(uncertain.potential)
    graph = frame_to_graph(read_frames(args.data / "valid.xyz")[0], uncertain.potential.spec.cutoff).to(dtype=torch.float32)
    eager = uncertain(graph)
    packages, compile_s, agreement = {}, {}, {}
    for form in args.forms:
        path = folder.parent / f"llpr-{form}.pt2"
        started = time.perf_counter()
        with symbolic_batching_rules():
            compile_potential(uncertain.potential, path, "cpu", False, uncertain.output_uncertainties,
                              uncertain.fingerprint(), llpr_check(uncertain, form == "batched"))
        compile_s[form] = time.perf_counter() - started
        packages[form] = CompiledPotential(path)
        out = packages[form](graph)
        agreement[form] = {key: float((out[key].double() - eager[key].double()).abs().max())
                           for key in (K.ENERGY, K.FORCES, K.FORCES_UNCERTAINTY)}
    bare = CompiledPotential(args.model / "compiled-cpu-float32.pt2")
    timed = {"bare": bare, **packages}
    medians = alternating_medians({name: partial(package, graph) for name, package in timed.items()},
                                  args.calls - args.calls // 8, warmup=args.calls // 8)
    rows = [[name, medians[name], medians[name] / medians["bare"], compile_s.get(name, float("nan"))] for name in timed]
    print_table("LLPR check compiled, acac (15 atoms), float32", ["program", "ms per call", "x bare", "compile s"], rows)
    write_results("llpr_compiled", {
        "system": "acac_15", "calls": args.calls, "median_ms": medians,
        "over_bare": {name: medians[name] / medians["bare"] for name in packages}, "compile_s": compile_s,
        "max_abs_difference_vs_eager": agreement,
    })


if __name__ == "__main__":
    main()
