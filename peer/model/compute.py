"""The one thread that runs a process's torch work.

On Linux torch's CPU kernels run on libgomp (GNU OpenMP), which gives every thread that ever ran
a parallel op its own team of worker threads. Once the teams together hold more threads than the
machine has cores, libgomp stops spinning between parallel regions (GOMP_SPINCOUNT is throttled
to 100), so each of a decode step's few hundred parallel ops pays a futex wake-up on every core.
Measured on a 2-core machine (embedded model, int4, one stage, decode): 14.5 ms/token while one
thread runs every torch op, 30-33 ms once a second thread has run any (and with
OMP_WAIT_POLICY=PASSIVE for any number of threads). The stage used to load on the event loop or
a `to_thread` helper and compute on its own worker, which was the second team: half the speed,
and a speed that depended on which thread had touched torch last.

So a process loads, profiles and runs every pass of every stage it serves on this one thread
(it also keeps a shard's KV pool single-threaded, which the stage relies on).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

THREAD_NAME = "torch"
# Never shut down: it lives as long as the process, and every stage of the process uses it.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)


async def on_compute(call: Callable[[], T]) -> T:
    """Run `call` on the compute thread, waiting without blocking the event loop."""
    return await submit_compute(call)


def submit_compute(call: Callable[[], T]) -> asyncio.Future[T]:
    """Queue `call` on the compute thread now: it runs before any work queued after this
    returns (the thread takes its work in order), whenever the caller awaits the result."""
    return asyncio.get_running_loop().run_in_executor(_executor, call)


# Stage processes or peers that share one host's cores (a local cluster, `edgeshard cluster`,
# the test suite's peers). Each computes in turn, and a team that spins long after its op steals the cores
# from the next stage; PASSIVE (never spin) makes every op pay a wake-up instead. Measured on 2
# cores, embedded model, int4, decode ms/token, 1 stage process / 3 stage processes:
# PASSIVE 30 / 30, libgomp's default (300,000 spins) 17 / 25-29, 100,000 spins 15 / 20.5,
# 10,000 spins 16 / 20.5, 1,000,000 spins - / 53.
COLOCATED_SPINCOUNT = "100000"


def colocated_environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the OpenMP spin that suits processes sharing cores, unless the user set one."""
    environment = dict(base)
    if "OMP_WAIT_POLICY" not in environment and "GOMP_SPINCOUNT" not in environment:
        environment["GOMP_SPINCOUNT"] = COLOCATED_SPINCOUNT
    return environment
