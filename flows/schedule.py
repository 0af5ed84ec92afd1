"""Which ready stage gets a free slot first: the one with the longest timed path to the end.

With two slots on two cores the run's wall time is close to the stages' total work divided
by two, *if* the long chains start early. Taking ready stages in ``dvc.yaml`` order started
the original ViTPose's training only after the VLM's adapters (the 2026-12-07 run: 1,845 s,
the pose branch last); longest-path-first list scheduling on the same stage times gives
1,764 s, the two-slot bound. Output does not depend on the order: every stage reads only its
upstream stages' outputs.

The times are the last run's in this project (``reports/pipeline_run.json``, stages DVC did
not skip), else those bundled in ``flows/stage_seconds.json`` (a reference run of the
embedded default); a stage in neither weighs the median of the known ones.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path
from typing import Any

from pipeline import layout

REFERENCE_TIMES = Path(__file__).with_name("stage_seconds.json")


def stage_seconds(workdir: Path) -> dict[str, float]:
    """Seconds per stage: the bundled reference, overridden by this project's last run."""
    seconds = dict(_read(REFERENCE_TIMES, "seconds", {}))
    stages = _read(workdir / layout.run_summary(), "stages", [])  # no run here yet: the reference stands
    try:
        seconds.update({s["stage"]: float(s["seconds"]) for s in stages if not s.get("skipped")})
    except (KeyError, TypeError, ValueError):
        pass  # a summary of another shape: the reference times stand
    return seconds


def _read(path: Path, key: str, default: Any) -> Any:
    """``json[key]`` of ``path``; ``default`` when the file is missing or unreadable (times only
    order the stages, so a missing one must never stop a run)."""
    try:
        return json.loads(path.read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return default


def longest_path_first(names: list[str], upstream: dict[str, list[str]], seconds: dict[str, float]) -> list[str]:
    """``names`` by decreasing length of the longest path from the stage to the end of the DAG
    (its own seconds plus its longest downstream path); ties keep ``names``' order."""
    known = [seconds[n] for n in names if n in seconds]
    default = statistics.median(known) if known else 1.0
    downstream: dict[str, list[str]] = {n: [] for n in names}
    for name in names:
        for up in upstream[name]:
            downstream[up].append(name)

    @functools.cache
    def length(name: str) -> float:
        return seconds.get(name, default) + max((length(d) for d in downstream[name]), default=0.0)

    return sorted(names, key=lambda n: -length(n))  # sorted is stable: ties in names' order
