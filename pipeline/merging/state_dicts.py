"""Running a merge method over whole state dicts, one decision group at a time.

Only one group is in flight at a time, and LoRA adapters
(:class:`~pipeline.merging.lora.LoraDeltas`) reach the methods as factors
(:class:`~pipeline.merging.low_rank.LowRank`): a 7B model merges in a few GB instead of holding
every ``B·A`` of every task, and methods that can stay low-rank never form one.

:func:`merge` returns a new state dict (small models, tests); :func:`merge_into` adds the merged
deltas into an existing one in place (large models, :func:`~pipeline.merging.write_merged_model`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.merging.lora import LoraDeltas
from pipeline.merging.low_rank import Delta, add_into_, dense
from pipeline.merging.registry import Decision, Granularity, GroupMerge, check_params, get_method, group_keys


@dataclass
class MergeResult:
    """A merged model.

    Attributes:
        state_dict: every key of the base; merged keys hold new tensors (base dtype), the others
            share the base's tensors (not copies).
        delta: the merged float32 delta of every merged key.
        decisions: one record per group, in the base model's order.
    """

    state_dict: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    decisions: list[Decision]


def describe_task(deltas: Sequence[Mapping[str, torch.Tensor]], i: int) -> str:
    """``task i`` plus the adapter folder it came from, when known (for error messages)."""
    source = getattr(deltas[i], "source", None)
    return f"task {i}" + (f" ({source})" if source else "")


def delta_shapes(delta: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Shape of every delta, without computing lazy ones."""
    shapes = getattr(delta, "shapes", None)
    if shapes is not None:
        return {k: tuple(s) for k, s in shapes.items()}
    return {k: tuple(v.shape) for k, v in delta.items()}


def check_inputs(
    base: Mapping[str, torch.Tensor], deltas: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> list[str]:
    """Validate the inputs of a merge and return the keys to merge in the base model's order.

    Raises:
        ValueError: no task, weights not one finite number per task or all zero, or a delta key
            that is not a base weight or has the wrong shape (naming the task and the key).
    """
    if not deltas:
        raise ValueError("a merge needs at least one task delta")
    if len(weights) != len(deltas):
        raise ValueError(f"{len(weights)} weights for {len(deltas)} task deltas")
    if not all(isinstance(w, int | float) and math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite numbers, got {list(weights)}")
    if not any(weights):
        raise ValueError(f"weights are all zero: {list(weights)}")
    touched: set[str] = set()
    for i, delta in enumerate(deltas):
        for key, shape in delta_shapes(delta).items():
            if key not in base:
                near = [k for k in base if k.rsplit(".", 2)[-2:] == key.rsplit(".", 2)[-2:]][:3]
                raise ValueError(
                    f"{describe_task(deltas, i)}: {key!r} is not a weight of the base model"
                    + (f"; similar base keys: {near}" if near else "")
                )
            if tuple(base[key].shape) != shape:
                raise ValueError(
                    f"{describe_task(deltas, i)}: delta {key!r} has shape {shape}, "
                    f"the base weight {tuple(base[key].shape)}"
                )
            touched.add(key)
    return [k for k in base if k in touched]


def iter_merge(
    method: str,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    granularity: Granularity = "module",
    **params: Any,
) -> Iterator[GroupMerge]:
    """Merge group by group, yielding each group's merged delta and decision.

    Args:
        method: a name in :data:`~pipeline.merging.registry.MERGE_METHODS`.
        base: base weights (name → tensor).
        deltas: per task, its full delta per base key it touches (plain dicts or lazy mappings).
        weights: one per task; −1 negates a task.
        granularity: ``"module"`` or ``"block"``: the unit of one decision.
        **params: the method's own parameters, checked against its signature before any work.

    Raises:
        KeyError: unknown method. ValueError: bad parameters or inputs (see :func:`check_inputs`).
    """
    fn = get_method(method)
    check_params(method, params)
    keys = check_inputs(base, deltas, weights)
    for group in group_keys(keys, granularity):
        group_base = {k: base[k] for k in group.keys}
        group_deltas = [{k: task_delta(d, k) for k in group.keys if k in d} for d in deltas]
        yield fn(group, group_base, group_deltas, list(weights), **params)


def task_delta(deltas: Mapping[str, torch.Tensor], key: str) -> Delta:
    """A task's delta for ``key`` as its methods receive it: LoRA factors when the task is an
    adapter (:class:`~pipeline.merging.lora.LoraDeltas`), else a float32 tensor."""
    if isinstance(deltas, LoraDeltas):
        return deltas.low_rank(key)
    return deltas[key].float()


def apply_deltas(
    state_dict: Mapping[str, torch.Tensor], delta: Mapping[str, Delta], *, inplace: bool = False
) -> dict[str, torch.Tensor]:
    """Base weights plus deltas: what the merged model loads.

    Args:
        state_dict: base weights.
        delta: name → delta (tensor or low-rank), every name a key of ``state_dict`` with the same shape.
        inplace: add into ``state_dict``'s tensors (e.g. a loaded model's) instead of new ones.

    Returns:
        A dict with every key of ``state_dict``; untouched keys share its tensors.

    Raises:
        ValueError: a delta key missing from ``state_dict`` or of another shape.
    """
    check_inputs(state_dict, [delta], [1.0])
    out = dict(state_dict)
    for key, d in delta.items():
        if inplace:
            add_into_(state_dict[key], d)
        else:
            out[key] = (state_dict[key].float() + dense(d)).to(state_dict[key].dtype)
    return out


def merge(
    method: str,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    granularity: Granularity = "module",
    **params: Any,
) -> MergeResult:
    """Merge task deltas into new weights; ``base`` is not modified. Arguments as :func:`iter_merge`."""
    delta: dict[str, torch.Tensor] = {}
    decisions: list[Decision] = []
    for out in iter_merge(method, base, deltas, weights, granularity=granularity, **params):
        delta.update({k: dense(d) for k, d in out.delta.items()})
        decisions.append(out.decision)
    return MergeResult(apply_deltas(base, delta), delta, decisions)


def merge_into(
    state_dict: Mapping[str, torch.Tensor],
    method: str,
    deltas: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    *,
    granularity: Granularity = "module",
    **params: Any,
) -> list[Decision]:
    """Merge and add each group's merged delta into ``state_dict``'s tensors as soon as it is
    ready (a loaded model's weights change in place). Arguments as :func:`iter_merge`.

    Note: with ``similarity="weight"`` a group's base is read before that group is updated, and
    groups never share keys, so streaming gives the same result as :func:`merge`.

    Returns:
        The decisions, one per group.
    """
    decisions = []
    for out in iter_merge(method, state_dict, deltas, weights, granularity=granularity, **params):
        for key, d in out.delta.items():
            add_into_(state_dict[key], d)
        decisions.append(out.decision)
    return decisions
