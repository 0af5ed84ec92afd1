"""Model merging in weight space: task LoRA adapters → one merged model.

* ``registry`` — :data:`MERGE_METHODS`, ``register``, ``get_method``; decision groups
  (one module, or one transformer block) and the :class:`Decision` record every method writes.
* ``methods`` — ``task_arithmetic``, ``linear``, ``magnitude_prune``, ``ties``, ``dare_linear``,
  ``dare_ties`` (cross-checked against ``peft.utils.merge_utils``).
* ``layer_wta`` — the HPE-CogVLM layer-based winner-takes-all merge (its exact rule is there).
* ``state_dicts`` — ``merge`` / ``merge_into`` / ``apply_deltas`` over whole state dicts.
* ``lora`` — PEFT adapter folder → full deltas ``B·A·α/r`` keyed by base weight names.
* ``checkpoint`` — ``write_merged_model``: base folder + adapters → merged ``save_pretrained``
  folder with ``merge_decisions.json``.

Importing the package registers every method.
"""

from __future__ import annotations

from pipeline.merging import layer_wta as _layer_wta  # noqa: F401  (registers layer_wta)
from pipeline.merging import methods as _methods  # noqa: F401  (registers the element-wise methods)
from pipeline.merging.checkpoint import DECISIONS_FILE, write_merged_model
from pipeline.merging.lora import LoraDeltas, lora_deltas, read_lora_config
from pipeline.merging.registry import (
    MERGE_METHODS,
    Decision,
    Group,
    GroupMerge,
    MergeFn,
    get_method,
    group_keys,
    method_params,
    register,
)
from pipeline.merging.state_dicts import MergeResult, apply_deltas, iter_merge, merge, merge_into

__all__ = [
    "DECISIONS_FILE",
    "MERGE_METHODS",
    "Decision",
    "Group",
    "GroupMerge",
    "LoraDeltas",
    "MergeFn",
    "MergeResult",
    "apply_deltas",
    "get_method",
    "group_keys",
    "iter_merge",
    "lora_deltas",
    "merge",
    "merge_into",
    "method_params",
    "read_lora_config",
    "register",
    "write_merged_model",
]
