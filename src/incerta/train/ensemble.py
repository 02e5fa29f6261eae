"""Deep ensembles: K members trained from different seeds, concurrently where cores allow."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tqdm.auto import tqdm

from incerta.config import RunConfig
from incerta.data.sources import prepare_splits
from incerta.train.checkpoint import load_potential
from incerta.train.run import train_run


def _train_member(config_json: str, run_dir: str, member: int, threads: int) -> int:
    torch.set_num_threads(threads)
    config = RunConfig.model_validate_json(config_json)
    config.training.progress = False
    train_run(config, run_dir, resume=True, member=member)
    return member


def member_dir(run_dir: Path, member: int) -> Path:
    return run_dir / "members" / f"member_{member}"


def train_ensemble(config: RunConfig, run_dir: str | Path, members: int, workers: int | None = None) -> dict:
    """Train ``members`` potentials into RUN_DIR/members/member_k and attach them, calibrated
    on the run's validation split, as a deep ensemble in RUN_DIR/model. Resumable."""
    from incerta.uq.fit import attach_ensemble

    run_dir = Path(run_dir)
    cores = os.cpu_count() or 1
    workers = max(1, min(members, workers or cores))
    threads = max(1, cores // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_train_member, config.model_dump_json(), str(member_dir(run_dir, k)), k, threads)
                   for k in range(members)]
        for future in tqdm(as_completed(futures), total=members, desc="ensemble members", unit="member",
                           disable=not config.training.progress):
            future.result()
    potentials = [load_potential(member_dir(run_dir, k)) for k in range(members)]
    splits = prepare_splits(config.data, config.seed)
    return attach_ensemble(run_dir / "model", potentials, splits.validation)
