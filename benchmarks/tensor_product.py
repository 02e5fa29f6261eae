"""The interaction's tensor product: e3nn's against a fused per-input-irrep formulation.

e3nn's ``TensorProduct`` (the model's kernel) computes one einsum per path. The alternative
measured here groups the paths by input irrep: the spherical harmonics are first contracted
with every path's Clebsch-Gordan coefficients into one (E, d_in, paths x d_out) operator, one
batched matrix product applies it to the edge features, and each path's radial weights scale
its slice. Both give the same messages (the largest difference is printed).

For the three layer kinds of the potential (scalars in; hidden irreps in and out; scalars
out) at l_max 1 and 2, 32 channels, and the 79,000 edges of the 1,536-atom water box: median
time (the two alternating, after one warm-up round) of forward + backward (gradients of features, harmonics and weights, as for forces) and
the size of the tensors held for the backward. Results in ``results/tensor_product.json``.

    .venv/bin/python benchmarks/tensor_product.py            # about a minute on 2 threads
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from common import alternating_medians, held_MB, print_table, write_results
from e3nn import o3

from incerta.nn.interaction import Interaction, hidden_irreps


class FusedTensorProduct:
    """The same map as an e3nn "uvu" tensor product with per-edge weights and single-channel
    second input (the harmonics), computed per input irrep with one batched matrix product."""

    def __init__(self, tp: o3.TensorProduct) -> None:
        self.tp = tp
        offsets, offset = [], 0
        for ins in tp.instructions:
            offsets.append(offset)
            offset += ins.path_shape[0] * ins.path_shape[1]
        self.groups = []
        for i_in, ((mul, ir), where) in enumerate(zip(tp.irreps_in1, tp.irreps_in1.slices())):
            paths = [(k, ins) for k, ins in enumerate(tp.instructions) if ins.i_in1 == i_in]
            width = sum(tp.irreps_out[ins.i_out].ir.dim for _, ins in paths)
            coupling = torch.zeros(tp.irreps_in2.dim, ir.dim, width)
            slices, column = [], 0
            for k, ins in paths:
                out = tp.irreps_out[ins.i_out].ir
                cg = o3.wigner_3j(ir.l, tp.irreps_in2[ins.i_in2].ir.l, out.l)  # (d_in, d_sh, d_out)
                coupling[tp.irreps_in2.slices()[ins.i_in2], :, column:column + out.dim] = ins.path_weight * cg.transpose(0, 1)
                slices.append((ins.i_out, column, column + out.dim, offsets[k], offsets[k] + mul))
                column += out.dim
            self.groups.append((where, mul, ir.dim, width, coupling.reshape(tp.irreps_in2.dim, -1), slices))

    def __call__(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        edges = x.shape[0]
        outputs: list[torch.Tensor | None] = [None] * len(self.tp.irreps_out)
        for where, mul, dim, width, coupling, slices in self.groups:
            operator = (sh @ coupling).view(edges, dim, width)
            product = torch.bmm(x[:, where].reshape(edges, mul, dim), operator)  # (E, mul, width)
            for i_out, start, stop, w_start, w_stop in slices:
                term = product[:, :, start:stop] * weights[:, w_start:w_stop].unsqueeze(-1)
                outputs[i_out] = term if outputs[i_out] is None else outputs[i_out] + term
        return torch.cat([out.reshape(edges, -1) for out in outputs], dim=1)


def forward_backward(run: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], object]:
    """One call of ``run`` on ``inputs`` and the gradients of its summed output with respect to them."""
    def call() -> object:
        out = run(*inputs)
        return torch.autograd.grad(out, inputs, torch.ones_like(out))
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, default=79_120, help="edges (the 1,536-atom water box at 5 Å)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for l_max in (1, 2):
        sh = o3.Irreps.spherical_harmonics(l_max)
        scalars, hidden = o3.Irreps("32x0e"), hidden_irreps(32, l_max)
        for layer, irreps_in, irreps_out in (("first", scalars, hidden), ("middle", hidden, hidden),
                                             ("last", hidden, scalars)):
            tp = Interaction(irreps_in, irreps_out, sh, 3, 8, [64, 64], 20.0).tensor_product
            fused = FusedTensorProduct(tp)
            inputs = [torch.randn(args.edges, dim, requires_grad=True) for dim in (irreps_in.dim, sh.dim, tp.weight_numel)]
            difference = float((tp(*inputs) - fused(*inputs)).abs().max())
            row = {"l_max": l_max, "layer": layer, "max_abs_difference": difference}
            runs = {"e3nn": tp, "fused": fused}
            medians = alternating_medians({name: forward_backward(run, inputs) for name, run in runs.items()},
                                          args.repeats, warmup=1)
            for name, run in runs.items():
                row[f"{name}_ms"] = medians[name]
                row[f"{name}_held_MB"] = held_MB(run, *inputs)
            rows.append(row)
            print(row, flush=True)
    print_table(f"tensor product, {args.edges} edges, forward + backward, {args.threads} threads, float32",
                ["l_max", "layer", "e3nn ms", "fused ms", "e3nn held MB", "fused held MB", "max |diff|"],
                [[r["l_max"], r["layer"], f"{r['e3nn_ms']:.0f}", f"{r['fused_ms']:.0f}", f"{r['e3nn_held_MB']:.0f}",
                  f"{r['fused_held_MB']:.0f}", f"{r['max_abs_difference']:.1e}"] for r in rows])
    write_results("tensor_product", {"edges": args.edges, "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
