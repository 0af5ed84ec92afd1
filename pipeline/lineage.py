"""Content hashes that match DVC's, so MLflow runs can name the exact DVC data version.

DVC 3 hashes a file by the MD5 of its bytes and a directory by the MD5 of the JSON list of
``{"md5", "relpath"}`` entries sorted by path, suffixed ``.dir`` — the value ``dvc.lock``
records for a directory output. Computing it here lets a stage log its own output's DVC
version to MLflow without calling ``dvc`` from inside a DVC stage (which would deadlock on
the repo lock). ``tests/integration/test_dvc.py`` checks it against ``dvc.lock``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    """MD5 hex digest of a file's bytes."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dvc_md5(path: str | Path) -> str:
    """The hash DVC records for ``path``: a file's MD5, or a directory's ``<md5>.dir``."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()} for p in path.rglob("*") if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    digest = hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()
    return digest + ".dir"
