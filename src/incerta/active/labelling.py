"""Labelling on Dask: a LocalCluster by default, or any scheduler (e.g. dask-jobqueue on SLURM).

Each structure is one task. Inside the task the oracle is retried on failure; a label that
still fails (or exceeds its time limit) comes back as a failure record, so the loop goes
on. Workers that die are replaced by Dask and their tasks rescheduled (``allowed
failures``); results are handed to ``on_result`` as they complete, so the caller can store
every label before the next one arrives.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from incerta.active.oracles import Oracle, OracleFailure
from incerta.data.frame import Frame


@dataclass
class LabelResult:
    """Outcome for one candidate: the labelled frame, or why it failed after all attempts."""

    key: str
    frame: Frame | None
    error: str | None
    attempts: int
    seconds: float


def _run_with_limit(oracle: Oracle, frame: Frame, time_limit: float | None) -> Frame:
    """Run the oracle; with a time limit, in a child process that is terminated when late."""
    if time_limit is None:
        return oracle.label(frame)
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return pool.apply_async(oracle.label, (frame,)).get(timeout=time_limit)
    except multiprocessing.TimeoutError as err:
        raise OracleFailure(f"time limit of {time_limit} s exceeded") from err
    finally:
        pool.terminate()


def label_one(oracle: Oracle, key: str, frame: Frame, retries: int = 1, time_limit: float | None = None) -> LabelResult:
    """Label ``frame``, trying ``1 + retries`` times; never raises for oracle problems."""
    started, error = time.perf_counter(), None
    for attempt in range(1, retries + 2):
        try:
            labelled = _run_with_limit(oracle, frame, time_limit)
            return LabelResult(key, labelled, None, attempt, time.perf_counter() - started)
        except OracleFailure as err:
            error = str(err)
        except Exception as err:  # anything the calculator throws counts as a failed label
            error = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
    return LabelResult(key, None, error, retries + 1, time.perf_counter() - started)


@dataclass(frozen=True)
class ClusterSpec:
    """Where labelling runs: ``scheduler`` address (None: a LocalCluster of ``workers``)."""

    scheduler: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    retries: int = 1
    time_limit_s: float | None = None


def connect(spec: ClusterSpec):
    """A Dask client for ``spec`` (import here: Dask is only needed for labelling). Without a
    scheduler address the client starts its own LocalCluster and shuts it down on ``close()``;
    its scheduler's HTTP server takes a free port (it starts one even without a dashboard,
    on 8787 by default, which clashes when several clusters run at once)."""
    from dask.distributed import Client

    if spec.scheduler:
        return Client(spec.scheduler)
    return Client(n_workers=spec.workers, threads_per_worker=spec.threads_per_worker, processes=True,
                  dashboard_address=":0")


def label_on_cluster(
    client, oracle: Oracle, items: Sequence[tuple[str, Frame]], spec: ClusterSpec,
    on_result: Callable[[LabelResult], None] | None = None,
) -> Iterator[LabelResult]:
    """Submit every (key, frame) and yield results as they complete."""
    from dask.distributed import as_completed

    keys = {
        client.submit(label_one, oracle, key, frame, spec.retries, spec.time_limit_s, key=f"label-{key}-{time.time_ns()}",
                      pure=False): key
        for key, frame in items
    }
    for future in as_completed(list(keys)):
        try:
            result = future.result()
        except Exception as err:  # e.g. the task's workers kept dying
            result = LabelResult(keys[future], None, f"lost: {type(err).__name__}: {err}", 0, 0.0)
        if on_result is not None:
            on_result(result)
        yield result
