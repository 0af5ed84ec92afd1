"""Connecting to Ray: a running cluster when ``RAY_ADDRESS`` is set, else a local one.

Scaling out is configuration (DESIGN §7): the same stage code runs on a laptop's local Ray
and on a cluster reached through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[float]:
    """Use the Ray already initialised in this process, join ``RAY_ADDRESS``, or start one.

    Yields:
        Seconds spent starting or joining Ray (0 when it was already initialised), so that
        benchmarks can report start-up apart from throughput.
    """
    import ray

    if ray.is_initialized():
        yield 0.0
        return
    t0 = time.perf_counter()
    address = os.environ.get("RAY_ADDRESS")
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        ray.init(address=address, **common)
    else:
        # The object store only has to hold a few batches of JPEGs in flight; a small store
        # keeps start-up fast and leaves memory to the workers.
        # address="local": always a new cluster of our own; a bare ray.init() would join any
        # cluster someone started on this machine with `ray start` (and then reject num_cpus).
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=512 * 1024**2, **common)
    try:
        yield time.perf_counter() - t0
    finally:
        ray.shutdown()
