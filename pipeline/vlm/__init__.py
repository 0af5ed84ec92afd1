"""Vision-language models: families, the embedded tiny VLM, prompts, answer formats, examples.

* ``families`` — registry ``FAMILIES`` / ``get_family(name)``: loader, prompts, strict parsers.
* ``prompts`` — the head-pose answer format ``[[yaw,pitch,roll]]`` and each family's box syntax.
* ``boxes`` — stored-frame pixels ↔ each family's integer grid.
* ``tiny`` — ``TinyVLMConfig``, ``build_tiny_vlm``, ``save_vlm`` (the default, trained from scratch).
* ``examples`` — Parquet rows → examples, ``collate`` (answer-only labels), ``generate_answers``.

Only the light modules are re-exported here; ``tiny`` and ``examples`` import torch and are
imported where they are used.
"""

from __future__ import annotations

from pipeline.vlm.families import DEFAULT_FAMILY, FAMILIES, VLMFamily, get_family
from pipeline.vlm.prompts import format_pose, parse_pose

__all__ = ["DEFAULT_FAMILY", "FAMILIES", "VLMFamily", "format_pose", "get_family", "parse_pose"]
