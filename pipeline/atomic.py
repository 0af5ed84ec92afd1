"""Atomic writes: a crashed stage never leaves a half-written file or folder.

A writer killed outright (``SIGKILL``, OOM killer, a killed ``dvc repro``) cannot clean up: its
hidden temporary (``.<name>.tmp-…``) stays beside the output, which itself is either absent or
the previous complete version. Temporaries carry their writer's pid and host, and the next
write of the same output removes those whose writer is dead on this host, so the leftovers of
killed runs do not pile up (a killed 300W-LP ingest leaves gigabytes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the temporaries left beside ``out`` by writers that died on this host.

    Returns:
        The paths removed. A temporary of a live writer, or of another host (shared
        storage: its pid means nothing here), is kept.
    """
    out = Path(out)
    # .<name>.tmp-<hex>-<pid>@<host> / .<name>.old-… (folders), .<name>.<pid>@<host>.<rand>.tmp (files)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:(?:tmp|old)-[0-9a-f]{{8}}-(\d+)@(.+)|(\d+)@(.+)\.[^.]+\.tmp)")
    host = socket.gethostname()
    removed = []
    try:
        siblings = list(out.parent.iterdir())
    except FileNotFoundError:
        return removed
    for p in siblings:
        m = pattern.fullmatch(p.name)
        if m is None:
            continue
        pid, owner_host = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if owner_host != host or _alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` by renames.

    On any exception the temporary folder is removed and ``out`` is left as it was. A writer
    killed outright leaves its temporary behind; the next ``atomic_dir(out)`` removes it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}-{_owner()}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}-{_owner()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file via a temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON (sorted keys, indented) via a temp file + rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
