"""Deep ensembles: K members trained from different seeds, concurrently on Dask, then attached
to a model folder as the ``ensemble`` uncertainty method."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from incerta.config.sources import prepare_splits
from incerta.config.training import RunConfig
from incerta.train.checkpoint import load_potential
from incerta.train.run import train_run
from incerta.uq.fit import attach_ensemble
from incerta.utils.cluster import ClusterSpec, connect


def _train_member(config_json: str, run_dir: str, member: int, threads: int) -> int:
    torch.set_num_threads(threads)
    config = RunConfig.model_validate_json(config_json)
    config.training.progress = False
    train_run(config, run_dir, resume=True, member=member)
    return member


def member_dir(run_dir: Path, member: int) -> Path:
    return run_dir / "members" / f"member_{member}"


def train_ensemble(config: RunConfig, run_dir: str | Path, members: int, workers: int | None = None,
                   scheduler: str | None = None) -> dict:
    """Train ``members`` potentials into RUN_DIR/members/member_k on Dask (a LocalCluster of
    ``workers`` processes by default, or the cluster at ``scheduler``) and attach them,
    calibrated on the run's validation split, as a deep ensemble in RUN_DIR/model. Resumable:
    finished members are kept, interrupted ones resume from their checkpoints."""
    from dask.distributed import as_completed

    run_dir = Path(run_dir)
    cores = os.cpu_count() or 1
    workers = max(1, min(members, workers or cores))
    threads = max(1, cores // workers)
    client = connect(ClusterSpec(scheduler=scheduler, workers=workers, threads_per_worker=1))
    try:
        futures = [client.submit(_train_member, config.model_dump_json(), str(member_dir(run_dir, k)), k, threads,
                                 key=f"member-{k}-{run_dir.name}", pure=False) for k in range(members)]
        for future in tqdm(as_completed(futures), total=members, desc="ensemble members", unit="member",
                           disable=not config.training.progress):
            future.result()
    finally:
        client.close()
    potentials = [load_potential(member_dir(run_dir, k)) for k in range(members)]
    training_time = sum(json.loads((member_dir(run_dir, k) / "metrics.json").read_text())["train_time_s"]
                        for k in range(members))
    splits = prepare_splits(config.data, config.seed)
    return attach_ensemble(run_dir / "model", potentials, splits.validation, training_time_s=training_time)
