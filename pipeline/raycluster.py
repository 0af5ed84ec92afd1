"""Connecting to Ray: a running cluster when ``RAY_ADDRESS`` is set, else a local one.

Scaling out is configuration: the same stage code runs on a laptop's local Ray
and on a cluster reached through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

DRIVER_CWD_ENV = "HPE_DRIVER_CWD"


def enter_driver_cwd() -> None:
    """Ray worker set-up hook: work in the driver's folder, so relative paths mean the same."""
    path = os.environ.get(DRIVER_CWD_ENV)
    if not path:
        return
    try:
        os.chdir(path)
    except OSError as err:  # that folder is not on this node: absolute paths still work
        import logging

        logging.getLogger(__name__).warning("cannot enter the driver's folder %s on this node: %s", path, err)


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
    _reload_auth_settings()
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    if address:
        # Workers of a cluster started elsewhere (`ray start`) run in the raylet's folder, not
        # ours: every relative path a stage hands them (raw files, Parquet, model folders,
        # checkpoints) would miss. Each worker of this job enters our folder first; on a real
        # cluster the project sits at the same path on every machine (docs/cluster.md).
        runtime_env = {
            "env_vars": {DRIVER_CWD_ENV: os.getcwd()},
            "worker_process_setup_hook": f"{__name__}.enter_driver_cwd",
        }
        ray.init(address=address, runtime_env=runtime_env, **common)
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


def _reload_auth_settings() -> None:
    """Make Ray read ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` from the environment again.

    Ray reads them once per process and caches the result (its config and token loader), so a
    process that ran a local Ray before (no token) and then joins a token-protected cluster
    (the flow's shared Ray, in direct mode) is refused by the cluster's GCS: "Failed to connect
    to Ray cluster". The reverse order would keep a token path that no longer exists. Ray's
    own tests reset the same two caches between clusters.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication has nothing cached
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def actor_resources(gpus_per_actor: float) -> dict[str, float]:
    """Ray resources of one inference actor (``map_batches`` kwargs); Ray must be running.

    Raises:
        ValueError: GPUs asked of a local Ray that has none (the job would wait forever).
    """
    import ray

    if gpus_per_actor <= 0:
        return {"num_cpus": 1}
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < gpus_per_actor and not os.environ.get("RAY_ADDRESS"):
        raise ValueError(f"evaluate.gpus_per_worker={gpus_per_actor:g}, but Ray sees {have:g} GPUs on this machine")
    return {"num_cpus": 1, "num_gpus": gpus_per_actor}


def actor_device(gpus_per_actor: float) -> str:
    """The torch device of an inference actor: ``cuda`` when Ray gave it a GPU share."""
    if gpus_per_actor <= 0:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"gpus_per_worker={gpus_per_actor:g}, but this actor sees no CUDA device")
    return "cuda"
