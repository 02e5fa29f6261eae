"""Beyond one process: data-parallel training (gloo on loopback), the on-disk store, Dask ensembles."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from incerta.config import RunConfig
from incerta.data.graph import frame_to_graph
from incerta.data.io import read_frames
from incerta.data.store import GraphStore, write_store
from incerta.train.run import train_run, train_run_parallel
from incerta.uq.ensemble_training import train_ensemble
from incerta.uq.store import load_uncertain_potential
from incerta.utils.distributed import training_device

MODEL = {"l_max": 1, "num_channels": 8, "num_layers": 2, "radial_hidden": [16], "readout_hidden": 8}


def config(train, epochs=2, **training) -> RunConfig:
    return RunConfig.model_validate({
        "seed": 4,
        "data": {"train": train, "n_val": 8},
        "model": MODEL,
        "training": {"epochs": epochs, "batch_size": 4, "lr": 0.01, "progress": False, **training},
    })


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "potential.safetensors"))


def assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)


def test_two_gloo_processes_match_one_process(acac, tmp_path):
    source = {"path": str(acac / "train_300K.xyz"), "select": ":40"}
    train_run(config(source), tmp_path / "one")
    run = train_run_parallel(config(source), tmp_path / "two", nprocs=2)
    assert run.metrics["epochs_run"] == 2 and run.datasets["validation"], "the run is read back for its report"
    assert_close(weights(tmp_path / "one"), weights(tmp_path / "two"))
    one = (tmp_path / "one" / "history.csv").read_text().splitlines()
    two = (tmp_path / "two" / "history.csv").read_text().splitlines()
    assert one[0] == two[0] and len(one) == len(two) == 3
    column = one[0].split(",").index("val_forces_rmse_meV_per_A")
    value = lambda lines: float(lines[-1].split(",")[column])
    assert abs(value(one) - value(two)) < 1e-3 * value(one), "validation errors are reduced over ranks"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_the_gpu_reaches_the_cpu_weights_with_one_or_two_ranks(acac, tmp_path):
    source = {"path": str(acac / "train_300K.xyz"), "select": ":24"}
    for device in ("cpu", "cuda"):
        run = config(source, device=device).model_dump()
        run["model"]["dtype"] = "float64"  # float32 sums in another order on the GPU drift further apart
        train_run(RunConfig.model_validate(run), tmp_path / device)
    assert_close(weights(tmp_path / "cpu"), weights(tmp_path / "cuda"), tol=1e-7)
    run["training"]["device"] = "cuda"
    train_run_parallel(RunConfig.model_validate(run), tmp_path / "two_ranks", nprocs=2)  # gloo on CUDA tensors
    assert_close(weights(tmp_path / "cuda"), weights(tmp_path / "two_ranks"), tol=1e-7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_a_gpu_where_there_is_none_says_so():
    assert training_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"training\.device is 'cuda' but PyTorch sees no GPU"):
        training_device("cuda")


def test_store_reads_back_equal_to_the_source(acac, tmp_path):
    frames = read_frames(acac / "train_300K.xyz")[:20]
    assert write_store(tmp_path / "data.h5", frames, cutoff=5.0) == 20
    store = GraphStore(tmp_path / "data.h5")
    assert len(store) == 20 and store.cutoff == 5.0
    for index in (0, 7, 19):
        original, stored = frame_to_graph(frames[index], 5.0), store[index]
        for field in ("positions", "numbers", "forces", "energy", "cell", "charge"):
            torch.testing.assert_close(getattr(stored, field), getattr(original, field), msg=field)
        edges = lambda g: sorted(map(tuple, torch.cat([g.edge_index.T.double(), g.edge_shifts], 1).tolist()))
        assert edges(stored) == edges(original)


def test_training_from_the_store_equals_training_from_the_file(acac, tmp_path):
    frames = read_frames(acac / "train_300K.xyz")[:40]
    write_store(tmp_path / "data.h5", frames, cutoff=5.0)
    train_run(config({"path": str(acac / "train_300K.xyz"), "select": ":40"}), tmp_path / "file")
    train_run(config(str(tmp_path / "data.h5")), tmp_path / "store")
    assert_close(weights(tmp_path / "file"), weights(tmp_path / "store"))


def test_ensemble_members_on_a_local_dask_cluster(acac, tmp_path):
    run = tmp_path / "ensemble"
    report = train_ensemble(config({"path": str(acac / "train_300K.xyz"), "select": ":40"}), run, members=2, workers=2)
    assert report["fit"]["members"] == 2
    uncertain = load_uncertain_potential(run / "model")
    first, second = uncertain.method.members
    assert not torch.equal(first.readout.hidden.weight, second.readout.hidden.weight)
    assert (run / "members" / "member_1" / "model" / "potential.safetensors").is_file()
