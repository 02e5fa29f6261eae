"""Training on real DFT data: it learns, it is reproducible, and it resumes after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from incerta.config import load_config
from incerta.config.sources import prepare_splits
from incerta.data.graph import frame_to_graph
from incerta.data.io import read_frames
from incerta.models.build import DataStatistics, build_potential
from incerta.models.predict import error_metrics, graphs_for
from incerta.train.checkpoint import load_potential, load_training_state
from incerta.train.losses import LossWeights
from incerta.train.run import train_run
from incerta.train.trainer import validation_loss

SMALL = """
seed: 3
data:
  train: {{path: {train}, select: ":80"}}
  n_val: 20
  e0s: {e0s}
model: {{l_max: 1, num_channels: 16, num_layers: 2, radial_hidden: [32], readout_hidden: 16}}
training: {{epochs: {epochs}, lr: 0.01, scheduler_patience: 3, progress: false}}
"""


def small_config(tmp_path: Path, acac: Path, epochs: int, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(SMALL.format(train=acac / "train_300K.xyz", e0s=acac / "isolated_atoms.xyz", epochs=epochs))
    return path


def test_training_lowers_validation_error(tmp_path, acac):
    config = load_config(small_config(tmp_path, acac, epochs=20))
    splits = prepare_splits(config.data, config.seed)
    train_graphs = [frame_to_graph(f, config.model.cutoff) for f in splits.train]
    e0s = read_frames(acac / "isolated_atoms.xyz")
    untrained = build_potential(config.model, DataStatistics.from_frames(splits.train, train_graphs, e0s), config.seed)
    before = error_metrics(untrained, graphs_for(untrained, splits.validation))
    after = train_run(config, tmp_path / "run").metrics["validation"]
    weights = LossWeights(config.training.energy_weight, config.training.forces_weight)
    assert after["forces_rmse_meV_per_A"] < 0.5 * before["forces_rmse_meV_per_A"]
    assert validation_loss(after, weights) < 0.3 * validation_loss(before, weights)
    exported = load_potential(tmp_path / "run")
    held_out = read_frames(acac / "test_MD_300K.xyz")[:50]
    test_before = error_metrics(untrained, graphs_for(untrained, held_out))
    test_after = error_metrics(exported, graphs_for(exported, held_out))
    assert test_after["forces_rmse_meV_per_A"] < 0.5 * test_before["forces_rmse_meV_per_A"]


def test_the_highest_rotation_order_trains_with_its_constants_intact(tmp_path, acac):
    """l_max 3 (the largest the config allows) trains (its weight average pairs the model's
    tensors with a copy's by position, and a copied tensor product used to hold extra ones),
    and the model it saves loads with every constant buffer of the network as built."""
    config = load_config(small_config(tmp_path, acac, epochs=1), ["model.l_max=3", "model.num_layers=3", "training.ema_decay=0.5"])
    train_run(config, tmp_path / "run")
    trained = load_potential(tmp_path / "run")
    splits = prepare_splits(config.data, config.seed)
    graphs = [frame_to_graph(f, config.model.cutoff) for f in splits.train]
    built = build_potential(config.model, DataStatistics.from_frames(splits.train, graphs, read_frames(acac / "isolated_atoms.xyz")))
    constants = dict(built.named_buffers())
    assert constants.keys() == dict(trained.named_buffers()).keys()
    for name, value in trained.named_buffers():
        torch.testing.assert_close(value, constants[name], msg=name)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "potential.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to float32 round-off (BLAS kernels may sum in a different order between processes)."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("ema_warmup", [False, True])
def test_resume_reaches_the_same_weights(tmp_path, acac, ema_warmup):
    def config(epochs: int):
        loaded = load_config(small_config(tmp_path, acac, epochs=epochs))
        return loaded.model_copy(update={"training": loaded.training.model_copy(update={"ema_warmup": ema_warmup})})

    straight = train_run(config(4), tmp_path / "straight").metrics
    train_run(config(2), tmp_path / "split")
    assert load_training_state(tmp_path / "split/checkpoints/last.pt")["epoch"] == 2
    resumed = train_run(config(4), tmp_path / "split").metrics
    assert resumed["epochs_run"] == straight["epochs_run"] == 4
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))


def test_a_longer_budget_goes_on_from_the_rate_the_final_decay_began_at(tmp_path, acac):
    """A finished run whose learning rate decayed over the last half of its 4 epochs, resumed
    with 12: it goes on from the rate the decay began at (the plateau scheduler could only have
    lowered the decayed one), then decays again over the last half of the new budget."""
    text = small_config(tmp_path, acac, epochs=4).read_text().replace("progress: false", "progress: false, lr_decay_fraction: 0.5")
    (tmp_path / "run.yaml").write_text(text)
    train_run(load_config(tmp_path / "run.yaml"), tmp_path / "run")
    (tmp_path / "run.yaml").write_text(text.replace("epochs: 4", "epochs: 12"))
    history = train_run(load_config(tmp_path / "run.yaml"), tmp_path / "run").history
    rates = [record["lr"] for record in history]
    assert len(rates) == 12 and rates[3] == pytest.approx(0.005, rel=1e-3), rates
    assert rates[4] == pytest.approx(0.01), "a longer budget goes on from the rate the decay began at"
    min_lr = load_config(tmp_path / "run.yaml").training.min_lr
    assert rates[11] == pytest.approx(min_lr + (rates[6] - min_lr) / 6, rel=1e-9), "and decays again over the new end"


def test_a_short_run_with_a_warming_average_exports_the_weights_it_reached(tmp_path, acac):
    """Two epochs (24 updates): with ``ema_warmup`` the exported average is near the trained
    weights; with the fixed 0.99 decay it still holds most of the initial ones (0.99^23 = 79 %)."""
    config = load_config(small_config(tmp_path, acac, epochs=2))
    splits = prepare_splits(config.data, config.seed)
    statistics = DataStatistics.from_frames(splits.train, [frame_to_graph(f, config.model.cutoff) for f in splits.train],
                                            read_frames(acac / "isolated_atoms.xyz"))
    initial = build_potential(config.model, statistics, config.seed).state_dict()

    def trailing(warmup: bool) -> float:
        """Distance of the exported average from the trained weights over their distance from the start."""
        changed = config.model_copy(update={"training": config.training.model_copy(update={"ema_warmup": warmup})})
        train_run(changed, tmp_path / f"warmup_{warmup}")
        state = load_training_state(tmp_path / f"warmup_{warmup}/checkpoints/last.pt")
        assert state["ema_steps"] == 24

        def distance(a: dict, b: dict) -> float:
            return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in state["model"]) ** 0.5

        return distance(state["ema"], state["model"]) / distance(state["model"], initial)

    assert trailing(warmup=True) < 0.3
    assert trailing(warmup=False) > 0.6, "the fixed decay trails behind (the option changes something)"


def test_seed_reproducibility(tmp_path, acac):
    one = train_run(load_config(small_config(tmp_path, acac, epochs=1)), tmp_path / "one").metrics
    two = train_run(load_config(small_config(tmp_path, acac, epochs=1)), tmp_path / "two").metrics
    assert one["validation"] == two["validation"]


def test_resume_refuses_a_changed_config(tmp_path, acac):
    train_run(load_config(small_config(tmp_path, acac, epochs=1)), tmp_path / "run")
    changed = load_config(small_config(tmp_path, acac, epochs=2), ["training.lr=0.5"])
    with pytest.raises(ValueError, match=r"different configuration \(training.lr\)"):
        train_run(changed, tmp_path / "run")


def test_kill_during_training_then_resume(tmp_path, acac):
    """kill -9 a real `incerta train` process mid-run; the resumed run matches an uninterrupted one."""
    config = small_config(tmp_path, acac, epochs=6)
    cli = [sys.executable, "-m", "incerta.cli.main", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cli, "--run-dir", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    victim = subprocess.Popen([*cli, "--run-dir", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed/checkpoints/last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not (last.exists() and load_training_state(last)["epoch"] >= 2):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"the process ended by itself (exit code {victim.returncode})"
    killed_after = load_training_state(last)["epoch"] if last.exists() else 0
    assert 2 <= killed_after < 6, f"killed after epoch {killed_after}: the resume must start mid-run, past epoch 2"
    assert not (tmp_path / "killed/model").exists(), "the process should have died before finishing"
    subprocess.run([*cli, "--run-dir", str(tmp_path / "killed")], check=True, env=env, capture_output=True)
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
