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

from incerta.data.frame import Frame
from incerta.data.oracles import Oracle, OracleFailure
from incerta.utils.cluster import ClusterSpec


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
