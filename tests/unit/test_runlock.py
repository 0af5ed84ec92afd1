"""The project run lock (pipeline/runlock.py): one run at a time, a clear refusal naming the
holder, an optional wait, and no stale lock after the holder is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runlock import RunLockBusy, lock_path, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
from pipeline.runlock import run_lock
with run_lock(sys.argv[1], flow_run_id="holder-run"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(workdir: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the lock for ``seconds``; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir), str(seconds)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_at_once_naming_the_first(tmp_path):
    with run_lock(tmp_path, flow_run_id="first-run") as held:
        assert held.waited_s < 1 and held.path == lock_path(tmp_path)
        holder = read_holder(tmp_path)
        assert holder["pid"] == os.getpid() and holder["flow_run_id"] == "first-run"
        t0 = time.monotonic()
        with pytest.raises(RunLockBusy, match=rf"pid {os.getpid()} on host .*Prefect flow run first-run") as err:
            with run_lock(tmp_path, flow_run_id="second-run"):
                pass
        assert time.monotonic() - t0 < 1
        assert err.value.holder["flow_run_id"] == "first-run" and "wait_for_lock_s" in str(err.value)
    assert read_holder(tmp_path) is None
    with run_lock(tmp_path):  # free again
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    proc = _holder(tmp_path, 60)
    assert read_holder(tmp_path)["pid"] == proc.pid
    with pytest.raises(RunLockBusy, match=f"pid {proc.pid} .*holder-run"):
        with run_lock(tmp_path):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The dead holder's details are still in the file; the kernel freed its flock.
    assert "holder-run" in lock_path(tmp_path).read_text()
    assert read_holder(tmp_path) is None
    with run_lock(tmp_path, flow_run_id="after") as held:
        assert held.waited_s < 1 and read_holder(tmp_path)["flow_run_id"] == "after"


def test_waiting_run_starts_when_the_holder_ends_and_gives_up_after_its_timeout(tmp_path):
    lines: list[str] = []
    proc = _holder(tmp_path, 1.0)
    with run_lock(tmp_path, wait_s=30, poll_s=0.05, log=lines.append) as held:
        assert held.waited_s > 0.5  # the holder kept it for 1 s after saying "held"
    assert len(lines) == 1 and f"held by pid {proc.pid}" in lines[0]

    proc = _holder(tmp_path, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunLockBusy, match="after waiting"):
            with run_lock(tmp_path, wait_s=0.5, poll_s=0.05):
                pass
        assert 0.5 <= time.monotonic() - t0 < 5
    finally:
        proc.kill()
        proc.wait()
