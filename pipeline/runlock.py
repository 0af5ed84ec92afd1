"""One pipeline run at a time per project: an advisory ``flock`` on ``.run/hpe.lock``.

Why a lock of our own: a Prefect ``hpe`` run is a series of ``dvc repro --single-item``
commands (or of direct stage calls when ``orchestration.use_dvc`` is off). DVC's repo lock
covers one command, and even that is released while a stage's command runs, so two
overlapping runs interleave their stages: the second fails half-way on a DVC lock error, or
(direct mode) both write the same outputs at the same time. The ``hpe`` flow takes this lock
for its whole run; a second run fails at once with a message naming the holder, or waits up
to ``wait_s`` seconds for it.

``flock`` is released by the kernel when the holding process ends, however it ends (a
``SIGKILL`` included), so a killed run never leaves a stale lock behind. The holder writes
its pid, host, Prefect flow-run id and start time into the lock file for the message only:
the lock itself is the ``flock``. The file is never deleted — unlinking a flock'd file lets
a waiter lock the old inode while a newcomer locks a new one, two holders at once.

``.run/`` must be on a file system that honours ``flock`` across the processes that run
flows (any local one; NFSv4 does, through POSIX locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOCK_FILE = Path(".run") / "hpe.lock"


class RunLockBusy(RuntimeError):
    """Another pipeline run holds the project's run lock (``holder``: its pid, host, flow run id…)."""

    def __init__(self, path: Path, holder: dict[str, Any], waited_s: float):
        self.path, self.holder, self.waited_s = path, holder, waited_s
        who = describe_holder(holder)
        waited = f" after waiting {waited_s:.0f} s" if waited_s > 0 else ""
        super().__init__(
            f"another pipeline run holds the run lock {path}{waited}: {who}. "
            "Only one run at a time may work on a project. Wait for it to finish or stop it "
            "(the lock is freed the moment its process ends, even if killed), or start this "
            "run with wait_for_lock_s=<seconds> to queue behind it."
        )


@dataclass(frozen=True)
class HeldRunLock:
    """The lock this process holds: where, what it wrote there, how long it waited for it."""

    path: Path
    holder: dict[str, Any]
    waited_s: float


def lock_path(workdir: str | Path) -> Path:
    return Path(workdir) / LOCK_FILE


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host h, Prefect flow run <id>, since <time> (<cmd>)`` from what the holder wrote."""
    if not holder.get("pid"):
        # Locked but not yet written (the holder is between flock and write): nothing to name.
        return "a process that has not written its details yet"
    parts = [f"pid {holder['pid']} on host {holder.get('host', '?')}"]
    if holder.get("flow_run_id"):
        parts.append(f"Prefect flow run {holder['flow_run_id']}")
    if holder.get("started_at"):
        parts.append(f"since {holder['started_at']}")
    text = ", ".join(parts)
    return f"{text} ({holder['cmd']})" if holder.get("cmd") else text


def read_holder(workdir: str | Path) -> dict[str, Any] | None:
    """The details of the run holding the lock now, or ``None`` when no run holds it."""
    path = lock_path(workdir)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_details(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_details(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def run_lock(
    workdir: str | Path,
    *,
    wait_s: float = 0.0,
    flow_run_id: str = "",
    poll_s: float = 0.5,
    log: Callable[[str], Any] | None = None,
) -> Iterator[HeldRunLock]:
    """Hold the project's run lock for the ``with`` block.

    Args:
        workdir: the project (the lock is ``<workdir>/.run/hpe.lock``).
        wait_s: seconds to wait for a busy lock; ``0`` fails at once.
        flow_run_id: written into the lock file so that a refused run can name this one.
        poll_s: how often a waiting run retries.
        log: called once with a line when the run starts waiting (e.g. a Prefect logger).

    Raises:
        RunLockBusy: another run still holds the lock after ``wait_s`` seconds.
    """
    path = lock_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC (Python's default): a `dvc repro` child must not inherit, and so outlive-hold, the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - t0
                if waited >= wait_s:
                    raise RunLockBusy(path, _read_details(path), waited if wait_s > 0 else 0.0) from None
                if not announced and log is not None:
                    log(
                        f"waiting up to {wait_s:g} s for the run lock {path}, held by {describe_holder(_read_details(path))}"
                    )
                    announced = True
                time.sleep(min(poll_s, max(0.01, wait_s - waited)))
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "flow_run_id": flow_run_id,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "cmd": " ".join(sys.argv)[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield HeldRunLock(path, holder, time.monotonic() - t0)
        finally:
            # Clear our details before the flock goes, so nobody is named as holder of a free lock.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
