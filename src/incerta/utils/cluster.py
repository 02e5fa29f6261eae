"""Dask clusters for fan-out work (labelling, ensemble members): a LocalCluster by default, or
any scheduler (e.g. dask-jobqueue on SLURM)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterSpec:
    """Where tasks run: ``scheduler`` address (None: a LocalCluster of ``workers`` processes);
    ``retries`` and ``time_limit_s`` (seconds) apply to each labelling task."""

    scheduler: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    retries: int = 1
    time_limit_s: float | None = None


def connect(spec: ClusterSpec):
    """A Dask client for ``spec`` (import here: Dask is only needed for fan-out). Without a
    scheduler address the client starts its own LocalCluster and shuts it down on ``close()``;
    its scheduler's HTTP server takes a free port (it starts one even without a dashboard,
    on 8787 by default, which clashes when several clusters run at once)."""
    from dask.distributed import Client

    if spec.scheduler:
        return Client(spec.scheduler)
    return Client(n_workers=spec.workers, threads_per_worker=spec.threads_per_worker, processes=True,
                  dashboard_address=":0")
