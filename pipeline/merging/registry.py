"""The one registry of merge methods, and how weights are grouped into merge decisions.

A merge method is a pure function over one *group* of weights — the unit that is decided
together: one module's weight (``granularity="module"``) or every weight of one transformer
block (``granularity="block"``). It receives the group's base tensors and each task's deltas for
those keys and returns the merged delta plus a :class:`Decision` record, so every method leaves
the same kind of audit trail (``merge_decisions.json``, MLflow). The driver that walks a whole
state dict group by group lives in :mod:`pipeline.merging.state_dicts`.

Adding a method = one function decorated with ``@register("name")`` + its tests.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import torch

Granularity = Literal["module", "block"]
GRANULARITIES: tuple[str, ...] = ("module", "block")

# A transformer block is everything under the first ``layers.<i>.`` of a key, e.g.
# ``model.language_model.layers.3.mlp.up_proj.weight`` → ``model.language_model.layers.3``.
# The vision tower's ``...encoder.layers.3`` is a different prefix, hence a different block.
BLOCK_PATTERN = re.compile(r"^(.*?(?:^|\.)layers\.\d+)\.")


@dataclass(frozen=True)
class Group:
    """Weights merged by one decision.

    Attributes:
        name: the module key (module granularity) or the block prefix (block granularity).
        keys: base state-dict keys of the group, in the base model's order.
    """

    name: str
    keys: tuple[str, ...]


@dataclass
class Decision:
    """What a method did with one group; one JSON object per group in ``merge_decisions.json``.

    Attributes:
        group: :attr:`Group.name`.
        keys: the weights the decision covers.
        action: ``"combine"`` (tasks mixed) or ``"winner"`` (one task's delta taken whole).
        norms: Frobenius norm of each task's *weighted* delta over the group.
        similarity: agreement that drove the decision (``layer_wta``), else ``None``.
        threshold: the threshold it was compared with (``layer_wta``), else ``None``.
        winner: index of the task taken when ``action == "winner"``.
        winner_by: ``"norm"`` or ``"priority"``: which rule picked the winner.
    """

    group: str
    keys: list[str]
    action: Literal["combine", "winner"]
    norms: list[float]
    similarity: float | None = None
    threshold: float | None = None
    winner: int | None = None
    winner_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GroupMerge:
    """A method's answer for one group: merged delta per key (a float32 tensor or a ``LowRank``)
    and its decision."""

    delta: dict[str, Any]
    decision: Decision


class MergeFn(Protocol):
    """Signature every merge method has; its own parameters are typed keyword-only arguments.

    Args:
        group: the weights to decide on together.
        base: base tensors of ``group.keys`` (any float dtype).
        deltas: per task, its delta for the keys of the group it touches — a float32 tensor or,
            for a LoRA adapter, a :class:`~pipeline.merging.low_rank.LowRank` (call
            :func:`~pipeline.merging.low_rank.dense` to get the tensor); a key a task does not
            touch is absent (that task's delta there is zero).
        weights: one number per task; −1 negates a task.

    Returns:
        The merged delta for every key of the group, and the group's decision.
    """

    def __call__(
        self,
        group: Group,
        base: Mapping[str, torch.Tensor],
        deltas: Sequence[Mapping[str, Any]],
        weights: Sequence[float],
        **params: Any,
    ) -> GroupMerge: ...


MERGE_METHODS: dict[str, MergeFn] = {}


def register(name: str) -> Callable[[MergeFn], MergeFn]:
    """Decorator adding a method to :data:`MERGE_METHODS` under ``name``.

    Raises:
        ValueError: when ``name`` is taken (two methods silently shadowing each other would
            make a params file mean different things depending on import order).
    """

    def add(fn: MergeFn) -> MergeFn:
        if name in MERGE_METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        MERGE_METHODS[name] = fn
        return fn

    return add


def get_method(name: str) -> MergeFn:
    """The method registered as ``name``.

    Raises:
        KeyError: for an unknown name; the message lists the valid ones.
    """
    try:
        return MERGE_METHODS[name]
    except KeyError:
        raise KeyError(f"unknown merge method {name!r}; valid: {', '.join(sorted(MERGE_METHODS))}") from None


def method_params(name: str) -> dict[str, Any]:
    """The parameters method ``name`` accepts, with their defaults (``inspect.Parameter.empty``
    when required): what a params file may set for it."""
    sig = inspect.signature(get_method(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Fail before any work when ``params`` do not fit method ``name``.

    Raises:
        KeyError: unknown method.
        ValueError: an unknown or a missing required parameter, naming it and listing the valid ones.
    """
    accepted = method_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"merge method {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(sorted(accepted)) or '(none)'}"
        )
    missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params)
    if missing:
        raise ValueError(f"merge method {name!r} needs parameter {', '.join(map(repr, missing))}")


def block_of(key: str) -> str | None:
    """The transformer block prefix of ``key`` (``...layers.<i>``), or ``None`` outside blocks."""
    match = BLOCK_PATTERN.match(key)
    return match.group(1) if match else None


def group_keys(keys: Iterable[str], granularity: Granularity) -> list[Group]:
    """Split ``keys`` into decision groups, keeping their order.

    Args:
        keys: state-dict keys in the base model's order.
        granularity: ``"module"`` — one group per key; ``"block"`` — one group per
            ``layers.<i>`` prefix, and a key without a layer index is a group on its own.

    Raises:
        ValueError: unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    members: dict[str, list[str]] = {}
    for key in keys:
        name = key if granularity == "module" else (block_of(key) or key)
        members.setdefault(name, []).append(key)
    return [Group(name, tuple(ks)) for name, ks in members.items()]
