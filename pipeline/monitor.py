"""Wall time and peak memory of a stage, including its child processes (Ray workers, DVC)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class Usage:
    seconds: float = 0.0
    peak_rss_bytes: int = 0


def _ray_workers() -> list[psutil.Process]:
    """Worker processes of a Ray cluster joined through ``RAY_ADDRESS`` (not our children)."""
    out = []
    for p in psutil.process_iter(["name"]):
        if (p.info.get("name") or "").startswith("ray::"):
            out.append(p)
    return out


def tree_rss(root: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes.

    With a shared Ray cluster on this machine (``RAY_ADDRESS``), the Ray workers doing the
    stage's work are not descendants; they are counted too.
    """
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    if os.environ.get("RAY_ADDRESS"):
        seen = {p.pid for p in procs}
        procs += [p for p in _ray_workers() if p.pid not in seen]
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # a child may exit between listing and reading
            pass
    return total


@contextmanager
def measure(pid: int | None = None, interval: float = 0.2) -> Iterator[Usage]:
    """Sample the RSS of process ``pid`` (default: this one) and its descendants.

    Summing the tree matters here: most of a stage's memory lives in Ray worker processes,
    which ``ru_maxrss`` of the caller never sees.
    """
    usage = Usage()
    root = psutil.Process(pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, tree_rss(root))
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
        usage.seconds = time.perf_counter() - t0
