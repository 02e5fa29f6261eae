"""The GP methods' per-structure kernel sums against GPyTorch's own kernel."""

from __future__ import annotations

import torch

from conftest import make_model
from incerta.uq import gp
from incerta.uq.gp import SVGPUncertainty


def test_kernel_sums_over_each_structure_in_blocks_equal_the_whole_kernel(monkeypatch):
    """sum_j k(z_i, z_j) over atom i's own structure (three structures of 5, 9 and 3 atoms):
    evaluated whole and in blocks of rows (a large cell's way), both as GPyTorch's kernel gives."""
    torch.manual_seed(0)
    method = SVGPUncertainty(make_model(), num_inducing=4).eval()
    method.gp.covar_module.base_kernel.lengthscale = 1.3
    z = torch.randn(17, 8, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 9, 3]))
    kernel = method.gp.covar_module(z).to_dense().detach()
    expected = torch.stack([kernel[i, batch == batch[i]].sum() for i in range(len(z))])
    torch.testing.assert_close(method._same_structure_sums(z, batch), expected, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(gp, "KERNEL_BLOCK", 40)  # blocks of 2 rows, the last one shorter
    torch.testing.assert_close(method._same_structure_sums(z, batch), expected, rtol=1e-12, atol=1e-12)
