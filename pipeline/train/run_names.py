"""Names of training runs: the training loop resumes a run of the same name from its last
checkpoint, so the name must change whenever what the run would compute changes.

It is keyed on the run's config and input data *and* on the pipeline's own source code. Without
the code, a change DVC sees (it reruns the stage because ``pipeline/`` changed) met a finished
run of the same name, and the loop "resumed" it at its last step: the new code never trained
(seen on 2026-12-04 with a change to the VLM's training crops). A killed run resumes as long as
the code is the same; after a code change the run starts afresh, which is also the only sound
choice (a checkpoint of other code may not even have the same shapes).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # the `pipeline` package


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """A digest of every ``.py`` file of the ``pipeline`` package (paths and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def run_name(stage: str, *parts: Any) -> str:
    """``<stage>-<digest of parts and the source>``; ``parts`` must be JSON-able (or ``str``-able)."""
    payload = json.dumps([parts, source_digest()], sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"
