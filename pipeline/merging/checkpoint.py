"""Write a merged model folder: base checkpoint + merged LoRA deltas → ``save_pretrained`` + decisions.

Runs on CPU in a plain process (PEFT merging is not done under DeepSpeed): the base is
loaded by its VLM family's loader, every merged delta is added into the loaded weights group by
group (never more than one group's full deltas in memory), and the folder is written atomically
with the decision of every group beside the weights, ready for MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.atomic import atomic_dir, write_json_atomic
from pipeline.merging.lora import lora_deltas
from pipeline.merging.registry import Decision, Granularity, check_params, group_keys
from pipeline.merging.state_dicts import merge_into

DECISIONS_FILE = "merge_decisions.json"


def write_merged_model(
    base_dir: str | Path,
    adapter_dirs: Sequence[str | Path],
    weights: Sequence[float],
    out_dir: str | Path,
    *,
    method: str,
    family: str = "tiny",
    granularity: Granularity = "module",
    params: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> list[Decision]:
    """Merge LoRA adapters into a base model and write the merged model folder.

    Args:
        base_dir: the base model folder (``save_pretrained`` layout) the adapters were trained on.
        adapter_dirs: PEFT LoRA adapter folders, one per task.
        weights: one per adapter; −1 negates a task.
        out_dir: the merged model folder; replaced atomically.
        method: a registered merge method (``layer_wta``, ``ties``, …).
        family: VLM family whose loader reads ``base_dir``.
        granularity: ``"module"`` or ``"block"`` decision groups.
        params: the method's own parameters (checked before the model is loaded).
        trust_remote_code: passed to the family's loader.

    Returns:
        The decisions, also written to ``out_dir/merge_decisions.json``.

    Raises:
        KeyError: unknown method or family. ValueError: bad parameters, an unsupported adapter,
            or an adapter that does not fit the base model. FileNotFoundError: a missing folder.
    """
    from pipeline.vlm.families import get_family

    params = dict(params or {})
    check_params(method, params)
    group_keys([], granularity)  # an unknown granularity fails before the model loads
    deltas = [lora_deltas(d) for d in adapter_dirs]
    model, processor = get_family(family).load(base_dir, trust_remote_code=trust_remote_code)
    with torch.no_grad():
        decisions = merge_into(model.state_dict(), method, deltas, weights, granularity=granularity, **params)
    record = {
        "method": method,
        "params": params,
        "granularity": granularity,
        "weights": list(weights),
        "base": str(base_dir),
        "adapters": [str(d) for d in adapter_dirs],
        "decisions": [d.as_dict() for d in decisions],
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json_atomic(tmp / DECISIONS_FILE, record)
    return decisions
