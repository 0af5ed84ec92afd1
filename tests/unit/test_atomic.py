"""Atomic writes under SIGKILL: the output is the old version or the new one,
never a part; the killed writer's temporary is removed by the next write of that output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.atomic import atomic_dir, remove_stale_temporaries, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys, time
from pathlib import Path
from pipeline.atomic import atomic_dir
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "part-0.parquet").write_bytes(b"new" * 1000)
    print("half-written", flush=True)
    time.sleep(60)
    (tmp / "part-1.parquet").write_bytes(b"new")
"""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_writer_killed_mid_folder_leaves_the_old_output_and_its_temporary_is_cleaned(tmp_path):
    out = tmp_path / "parquet" / "aflw2000"
    with atomic_dir(out) as tmp:
        (tmp / "part-0.parquet").write_bytes(b"old")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half-written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert sorted(p.name for p in out.iterdir()) == ["part-0.parquet"]
    assert (out / "part-0.parquet").read_bytes() == b"old"
    (leftover,) = [p for p in out.parent.iterdir() if p.name != "aflw2000"]
    assert leftover.name.startswith(".aflw2000.tmp-") and f"-{proc.pid}@" in leftover.name

    with atomic_dir(out) as tmp:
        (tmp / "part-0.parquet").write_bytes(b"v2")
    assert [p.name for p in out.parent.iterdir()] == ["aflw2000"]
    assert (out / "part-0.parquet").read_bytes() == b"v2"


def test_only_dead_writers_temporaries_on_this_host_are_removed(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    out = tmp_path / "metrics.json"
    stale = [
        tmp_path / f".metrics.json.{dead}@{host}.k2j4h5g6.tmp",
        tmp_path / f".metrics.json.tmp-0123abcd-{dead}@{host}",
        tmp_path / f".metrics.json.old-0123abcd-{dead}@{host}",
    ]
    kept = [
        tmp_path / f".metrics.json.{os.getpid()}@{host}.k2j4h5g6.tmp",  # a live writer
        tmp_path / f".metrics.json.{dead}@other-host.k2j4h5g6.tmp",  # shared storage: not ours to judge
        tmp_path / f".other.json.{dead}@{host}.k2j4h5g6.tmp",  # another output's
        tmp_path / ".metrics.json.notes",
    ]
    for p in stale + kept:
        p.mkdir() if ".tmp-" in p.name or ".old-" in p.name else p.write_text("x")
    write_json_atomic(out, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [*kept, out])
    assert remove_stale_temporaries(out) == []
