"""``layer_wta``: the paper's LoRA layer-based merge — layers that agree are combined, layers that
disagree are taken whole from one task ("winner takes all").

HPE-CogVLM (Tian et al., https://arxiv.org/abs/2406.01914) merges a head-pose LoRA model into a
grounding LoRA model layer by layer: a high cosine-similarity threshold decides whether two
layers may be blended; below it one model's layer is kept as it is, so neither task's answer
format is blended into invalid text. The paper gives the idea, not every detail; this is the exact
rule implemented here.

For every group ``g`` (one module's weight, or every weight of one transformer block with
``granularity="block"``) and tasks ``i = 1..N`` with weights ``wᵢ`` and deltas ``δᵢ`` (a task that
does not touch a weight has a zero delta there):

1. **Vectors compared.** ``vᵢ = wᵢ·δᵢ`` (``similarity="delta"``) or ``vᵢ = θ₀ + wᵢ·δᵢ``, the
   task's updated weights (``similarity="weight"``), each flattened and concatenated over the
   keys of ``g``. Cosine is scale-free, so only the sign of ``wᵢ`` matters here: weight −1 makes
   a task point the other way. A zero vector has cosine 0 with anything.
2. **Agreement.** ``s = min_{i<j} cos(vᵢ, vⱼ)`` — with more than two tasks, every pair must
   agree. A single task agrees with itself (``s`` is recorded as ``null``).
3. **Action.** If ``s ≥ τ`` (``threshold``): *combine* —
   ``Δ = Σᵢ wᵢ·δᵢ / Σᵢ |wᵢ|`` (``combine="mean"``, default) or ``Δ = Σᵢ wᵢ·δᵢ``
   (``combine="sum"``, task arithmetic). Otherwise *winner* — the same combine over the winner
   ``k`` alone: ``Δ = sign(w_k)·δ_k`` (mean) or ``w_k·δ_k`` (sum); the other tasks' deltas are
   dropped for this group.
4. **Winner.** ``winner="norm"``: the largest ``‖wᵢ·δᵢ‖_F`` over the group (the first task on a
   tie). ``winner="priority"``: a map from a module-name substring to a task index, e.g.
   ``{"self_attn": 1, "mlp": 0}``; each key of the group takes the task of its longest matching
   substring; all keys of the group must agree (else ``ValueError``), and a group no substring
   matches falls back to the norm rule (recorded in ``winner_by``).

Merging identical deltas with ``mean`` gives that delta back whatever τ (both branches do), and
a single task with weight −1 is subtracted. Cosines are accumulated in float64: with
``similarity="weight"`` they sit within ~1e-6 of 1. LoRA deltas are never formed in full here:
cosines, norms and the combined delta all come from the factors (:mod:`pipeline.merging.low_rank`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from pipeline.merging.low_rank import Delta, gram
from pipeline.merging.low_rank import combine as combine_deltas
from pipeline.merging.registry import Decision, Group, GroupMerge, register

Similarity = Literal["delta", "weight"]
Combine = Literal["mean", "sum"]
Winner = Literal["norm", "priority"]


def compared_gram(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    similarity: Similarity,
) -> tuple[torch.Tensor, list[float]]:
    """Gram matrix of the compared vectors ``vᵢ`` (rule step 1) and the weighted delta norms.

    The Gram of ``[θ₀,] δ₁ … δ_N`` summed over the group's keys (from the LoRA factors where the
    deltas are low-rank); the ``vᵢ`` are linear combinations of those, so their Gram is
    ``C·G·Cᵀ`` without ever forming ``θ₀ + wᵢ·δᵢ``.
    """
    n = len(deltas)
    offset = 1 if similarity == "weight" else 0
    raw = torch.zeros(n + offset, n + offset, dtype=torch.float64)
    for key in group.keys:
        pieces = [d.get(key) for d in deltas]
        raw += gram([base[key], *pieces] if offset else pieces)
    mix = torch.zeros(n, n + offset, dtype=torch.float64)
    for i, w in enumerate(weights):
        mix[i, offset + i] = w
        if offset:
            mix[i, 0] = 1.0
    norms = [abs(w) * math.sqrt(max(float(raw[offset + i, offset + i]), 0.0)) for i, w in enumerate(weights)]
    return mix @ raw @ mix.T, norms


def min_pairwise_cosine(g: torch.Tensor) -> float | None:
    """Smallest cosine over pairs of the vectors whose Gram is ``g``; ``None`` for one vector."""
    n = g.shape[0]
    if n < 2:
        return None
    diag = g.diagonal().clamp(min=0).sqrt()
    cosines = []
    for i in range(n):
        for j in range(i + 1, n):
            denom = float(diag[i] * diag[j])
            cosines.append(float(g[i, j]) / denom if denom > 0 else 0.0)
    return min(cosines)


def priority_winner(group: Group, priority: Mapping[str, int], n_tasks: int) -> int | None:
    """The task ``priority`` assigns to ``group`` (rule step 4), ``None`` if no substring matches.

    Raises:
        ValueError: a task index out of range, or keys of the group mapped to different tasks.
    """
    bad = {s: t for s, t in priority.items() if not 0 <= t < n_tasks}
    if bad:
        raise ValueError(f"layer_wta priority {bad} names tasks outside 0..{n_tasks - 1}")
    chosen: dict[str, int] = {}
    for key in group.keys:
        matches = [s for s in priority if s in key]
        if matches:
            chosen[key] = priority[max(matches, key=len)]
    if len(set(chosen.values())) > 1:
        raise ValueError(
            f"layer_wta priority gives group {group.name!r} to several tasks ({chosen}); "
            "with granularity='block' map whole blocks or use granularity='module'"
        )
    return next(iter(chosen.values()), None)


def weighted_sum(
    group: Group, base: Mapping[str, torch.Tensor], deltas: Sequence[Mapping[str, Delta]], coeffs: list[float]
) -> dict[str, Delta]:
    """``Σᵢ cᵢ·δᵢ`` per key of the group (low-rank when the deltas are)."""
    return {
        key: combine_deltas([(c, d[key]) for c, d in zip(coeffs, deltas, strict=True) if key in d], base[key].shape)
        for key in group.keys
    }


@register("layer_wta")
def layer_wta(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    *,
    threshold: float = 0.9,
    similarity: Similarity = "delta",
    combine: Combine = "mean",
    winner: Winner = "norm",
    priority: Mapping[str, int] | None = None,
) -> GroupMerge:
    """Layer-based winner-takes-all merge (see the module docstring for the exact rule).

    Args:
        threshold: τ, the cosine at or above which the tasks' layers are combined.
        similarity: ``"delta"`` — cosine of the weighted deltas; ``"weight"`` — of the updated
            weights ``θ₀ + wᵢ·δᵢ``.
        combine: ``"mean"`` (Σ wᵢδᵢ / Σ|wᵢ|) or ``"sum"`` (Σ wᵢδᵢ, task arithmetic).
        winner: ``"norm"`` or ``"priority"`` (needs ``priority``).
        priority: module-name substring → task index, for ``winner="priority"``.

    Raises:
        ValueError: a parameter out of its range, or an ambiguous priority map.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"layer_wta threshold is a cosine in [-1, 1], got {threshold}")
    if similarity not in ("delta", "weight"):
        raise ValueError(f"layer_wta similarity {similarity!r}; valid: delta, weight")
    if combine not in ("mean", "sum"):
        raise ValueError(f"layer_wta combine {combine!r}; valid: mean, sum")
    if winner not in ("norm", "priority") or (winner == "priority" and not priority):
        raise ValueError(f"layer_wta winner {winner!r} (priority={priority!r}); valid: norm, or priority with a map")

    g, norms = compared_gram(group, base, deltas, weights, similarity)
    agreement = min_pairwise_cosine(g)
    scale = sum(abs(w) for w in weights) if combine == "mean" else 1.0
    decision = Decision(group.name, list(group.keys), "combine", norms, agreement, threshold)
    if agreement is None or agreement >= threshold:
        return GroupMerge(weighted_sum(group, base, deltas, [w / scale for w in weights]), decision)

    k = priority_winner(group, priority, len(deltas)) if winner == "priority" else None
    decision.winner_by = "norm" if k is None else "priority"
    if k is None:
        k = max(range(len(norms)), key=norms.__getitem__)
    w_k = weights[k]
    coeff = 0.0 if w_k == 0 else (math.copysign(1.0, w_k) if combine == "mean" else w_k)
    decision.action, decision.winner = "winner", k
    coeffs = [coeff if i == k else 0.0 for i in range(len(deltas))]
    return GroupMerge(weighted_sum(group, base, deltas, coeffs), decision)
