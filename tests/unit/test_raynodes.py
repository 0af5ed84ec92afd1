"""``pipeline.raynodes`` without Ray: what ``stop`` may signal, and what ``start`` refuses.

Stopping must reach the recorded processes and their descendants (Ray workers start their own
process groups) and nothing else on the machine; a recycled pid must never be taken for ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from pipeline import raynodes

# A parent that starts a child in a process group of its own (as a Ray worker does), then waits.
PARENT = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); time.sleep(60)"


def _proc(pid: int) -> raynodes.Proc:
    return raynodes.Proc(pid, psutil.Process(pid).create_time(), "python")


def _children(pid: int, n: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children()
        if len(kids) >= n:
            return kids
        time.sleep(0.05)
    raise AssertionError("the child did not start")


def test_a_recycled_pid_is_not_ours():
    me = _proc(os.getpid())
    assert me.process() is not None
    assert raynodes.Proc(os.getpid(), me.create_time + 5.0, "python").process() is None


def test_stop_ends_the_recorded_processes_and_their_descendants_only(tmp_path):
    ours = subprocess.Popen([sys.executable, "-c", PARENT])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (child,) = _children(ours.pid, 1)
        assert os.getpgid(child.pid) != os.getpgid(ours.pid)  # a process-group kill would miss it
        cluster = raynodes.Cluster(str(tmp_path), "127.0.0.1:1", "", 1, [], time.time())
        cluster.nodes.append(raynodes.Node("n0", str(tmp_path / "n0"), True, [_proc(ours.pid)]))
        cluster.save()
        assert raynodes.status(tmp_path)["running"]

        assert raynodes.stop(tmp_path, grace=5) == 2
        assert ours.wait(timeout=10) is not None
        assert not raynodes._running(child)
        assert other.poll() is None  # not recorded, not a descendant: untouched
        assert not raynodes.status(tmp_path)["running"] and raynodes.stop(tmp_path) == 0
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_start_refuses_a_state_folder_too_deep_for_ray_sockets(tmp_path):
    deep = tmp_path / ("x" * 60)
    with pytest.raises(raynodes.ClusterError, match="too long"):
        raynodes.start(deep)
    assert not deep.exists()


def test_inference_actors_ask_for_gpus_only_when_configured():
    import torch

    from pipeline.raycluster import actor_device, actor_resources

    assert actor_resources(0) == {"num_cpus": 1} and actor_device(0) == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gpus_per_worker=0.5, but this actor sees no CUDA device"):
            actor_device(0.5)
