"""Neighbour graphs and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from incerta.data.frame import Frame
from incerta.data.graph import collate, frame_to_graph
from incerta.data.neighbors import neighbor_list


def test_neighbor_list_matches_ase(silicon):
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    edges, shifts = neighbor_list(silicon.positions, silicon.cell.array, silicon.pbc, 4.0)
    i, _, d = ase_neighbor_list("ijd", silicon, 4.0)
    vectors = silicon.positions[edges[1]] - silicon.positions[edges[0]] + shifts @ silicon.cell.array
    assert sorted(np.round(np.linalg.norm(vectors, axis=1), 8)) == pytest.approx(sorted(np.round(d, 8)))
    assert edges.shape[1] == len(i) > 8 * len(silicon), "cutoff beyond the cell: second shell through images"


def test_batch_gives_the_same_results_as_single_structures(model):
    frames = [Frame.from_atoms(molecule(name)) for name in ("H2O", "CH4", "CH3CH2OH")]
    graphs = [frame_to_graph(f, model.spec.cutoff).to(dtype=torch.float64) for f in frames]
    batch = collate(graphs)
    assert batch.num_graphs == 3 and batch.num_atoms.tolist() == [3, 5, 9]
    together = model(batch)
    for k, graph in enumerate(graphs):
        alone = model(graph)
        assert float(together["energy"][k]) == pytest.approx(float(alone["energy"][0]), abs=1e-12)
        np.testing.assert_allclose(together["forces"][batch.batch == k].detach(), alone["forces"].detach(), atol=1e-12)
