"""Record builders: one per record kind, turning a decoded sample into Parquet rows.

Each kind provides ``SCHEMA`` (the fixed Arrow schema of its Parquet), and
``build(sample, item, ctx) -> Outcome`` which validates, crops, resizes and encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    """What one listed unit became: kept rows, or a filtered/quarantined reason per unit."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[tuple[str, str]] = field(default_factory=list)  # (source_id, reason)
    # (source_id, file, field, reason, units)
    quarantined: list[tuple[str, str, str, str, int]] = field(default_factory=list)
