"""Element-wise merge methods: linear, task arithmetic, magnitude pruning, TIES, DARE.

All of them mix the task deltas of each weight independently. The sparsifying ones are written
once, as stateless primitives (prune, elect a sign, disjoint mean) composed by
:func:`sparse_merge` and registered several times with different settings; task arithmetic and
linear are plain weighted sums, which stay low-rank for LoRA deltas (no full ``B·A`` formed):

=================  ==========  =============  =====================================
method             prune       elect sign     combine
=================  ==========  =============  =====================================
task_arithmetic    —           —              Σ wᵢ·δᵢ
magnitude_prune    top-k |δ|   —              Σ wᵢ·δᵢ
ties               top-k |δ|   yes            mean of the agreeing wᵢ·δᵢ
dare_linear        random      —              Σ wᵢ·δᵢ
dare_ties          random      yes            mean of the agreeing wᵢ·δᵢ
linear             —           —              Σ wᵢ·δᵢ / Σ |wᵢ|
=================  ==========  =============  =====================================

They match ``peft.utils.merge_utils`` on full tensors, with one deliberate difference: the sign
election runs on the *weighted* deltas, so a task with weight −1 votes with its negated sign (PEFT
elects on the unweighted ones). Both agree whenever the weights are equal and positive.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from pipeline.merging.low_rank import Delta, combine, dense, squared_norm
from pipeline.merging.registry import Decision, Group, GroupMerge, register

Pruning = Literal["none", "magnitude", "random"]
SignMethod = Literal["total", "frequency"]
SAMPLE = 1 << 16  # entries sampled to bracket the magnitude cut (see kth_largest)


# ---------------------------------------------------------------- primitives
def check_density(density: float) -> None:
    """Raises ValueError unless 0 < density ≤ 1 (the fraction of entries kept)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest of a flat tensor, exactly.

    ``kthvalue`` on tens of millions of entries takes seconds; a strided sample gives a value
    that about ``k`` entries (plus a safety margin) exceed, and the exact answer is then looked
    for among those few candidates only. When the sample misjudges, the full search runs.
    """
    n = values.numel()
    if n > 16 * SAMPLE:
        sample = values[:: n // SAMPLE]
        fraction = k / n
        margin = 4 * math.sqrt(fraction * (1 - fraction) / sample.numel()) + 2 / sample.numel()
        rank = min(sample.numel(), math.ceil((fraction + margin) * sample.numel()))
        floor = sample.kthvalue(sample.numel() - rank + 1).values
        candidates = values[values >= floor]
        if candidates.numel() >= k:
            return candidates.kthvalue(candidates.numel() - k + 1).values
    return values.kthvalue(n - k + 1).values


def magnitude_prune_tensor(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """``tensor`` with all but its ``int(density·numel)`` largest-magnitude entries zeroed
    (entries tied with the k-th largest magnitude are all kept)."""
    k = int(density * tensor.numel())
    if k >= tensor.numel():
        return tensor
    if k == 0:
        return torch.zeros_like(tensor)
    magnitude = tensor.abs()
    return tensor * (magnitude >= kth_largest(magnitude.reshape(-1), k))


def key_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded by ``(seed, key)``: each weight's random mask is reproducible and
    independent of the order (or the subset) in which weights are merged."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def random_prune_tensor(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density`` and divide by it,
    so the pruned tensor equals ``tensor`` in expectation."""
    if density >= 1.0:
        return tensor
    # uniform < p draws the same mask as torch.bernoulli(full_like(tensor, p)) (PEFT's), faster.
    keep = torch.rand(tensor.shape, generator=generator) < density
    return tensor * keep / density


def elect_sign(weighted: torch.Tensor, method: SignMethod = "total") -> torch.Tensor:
    """Mask of the entries whose sign agrees with the elected one (TIES step 2).

    Args:
        weighted: task tensors stacked on dim 0.
        method: ``"total"`` — the sign of the sum; ``"frequency"`` — the sign most tasks have.
            Zero sums elect ``+``; zero entries never agree (they carry no vote).

    Returns:
        A boolean tensor shaped like ``weighted``.
    """
    signs = weighted.sign()
    if method == "total":
        votes = weighted.sum(dim=0)
    elif method == "frequency":
        votes = signs.sum(dim=0)
    else:
        raise ValueError(f"unknown majority_sign_method {method!r}; valid: total, frequency")
    elected = torch.where(votes >= 0, 1.0, -1.0)
    return signs == elected


def disjoint_mean(weighted: torch.Tensor, agree: torch.Tensor) -> torch.Tensor:
    """Per entry, the mean over the tasks that agree with the elected sign (TIES step 3)."""
    kept = torch.where(agree, weighted, 0.0).sum(dim=0)
    return kept.div_(agree.sum(dim=0, dtype=weighted.dtype).clamp_(min=1))


def sparse_merge(
    deltas: torch.Tensor,
    weights: torch.Tensor,
    *,
    prune: Pruning = "none",
    density: float = 1.0,
    elect: SignMethod | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Prune each task's delta, weight it, then sum it or take TIES's disjoint mean.

    Args:
        deltas: task deltas of one weight stacked on dim 0 (float32).
        weights: one weight per task.
        prune: ``"none"``, ``"magnitude"`` (keep the top ``density`` by |δ|) or ``"random"``
            (DARE; needs ``generator``).
        density: fraction of entries kept.
        elect: ``None`` to sum, or the TIES sign-election method for a disjoint mean.
        generator: source of DARE's random masks (tasks drawn in order).

    Returns:
        The merged delta, shaped like one task's delta.
    """
    if prune == "magnitude":
        deltas = torch.stack([magnitude_prune_tensor(d, density) for d in deltas])
    elif prune == "random":
        if generator is None:
            raise ValueError("random pruning needs an explicit generator (reproducible masks)")
        deltas = torch.stack([random_prune_tensor(d, density, generator) for d in deltas])
    elif prune != "none":
        raise ValueError(f"unknown pruning {prune!r}; valid: none, magnitude, random")
    weighted = deltas * weights.reshape(-1, *([1] * (deltas.dim() - 1)))
    if elect is None:
        return weighted.sum(dim=0)
    return disjoint_mean(weighted, elect_sign(weighted, elect))


# ---------------------------------------------------------------- group plumbing
KeyMerge = Callable[[str, list[Delta | None], torch.Size], Delta]


def weighted_norms(group: Group, deltas: Sequence[Mapping[str, Delta]], weights: Sequence[float]) -> list[float]:
    """Frobenius norm of each task's weighted delta over the whole group."""
    return [
        abs(w) * math.sqrt(sum(squared_norm(d[k]) for k in group.keys if k in d))
        for d, w in zip(deltas, weights, strict=True)
    ]


def merge_each_key(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    merge_key: KeyMerge,
) -> GroupMerge:
    """Run a per-weight method on every key of ``group``; the decision is always "combine".

    ``merge_key(key, task deltas (None where a task does not touch it), shape)``.
    """
    merged = {key: merge_key(key, [d.get(key) for d in deltas], base[key].shape) for key in group.keys}
    return GroupMerge(merged, Decision(group.name, list(group.keys), "combine", weighted_norms(group, deltas, weights)))


def elementwise(weights: Sequence[float], fn: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]) -> KeyMerge:
    """A :data:`KeyMerge` running ``fn(key, stacked dense deltas, weights)``, zeros for missing tasks."""
    w = torch.tensor(list(weights), dtype=torch.float32)

    def merge_key(key: str, ds: list[Delta | None], shape: torch.Size) -> Delta:
        stacked = torch.stack([torch.zeros(shape) if d is None else dense(d) for d in ds])
        return fn(key, stacked, w)

    return merge_key


def scaled_sum(coeffs: Sequence[float]) -> KeyMerge:
    """A :data:`KeyMerge` for ``Σ cᵢ·δᵢ``, kept low-rank for LoRA deltas (no full tensor formed)."""

    def merge_key(_key: str, ds: list[Delta | None], shape: torch.Size) -> Delta:
        return combine([(c, d) for c, d in zip(coeffs, ds, strict=True) if d is not None], shape)

    return merge_key


# ---------------------------------------------------------------- registered methods
@register("task_arithmetic")
def task_arithmetic(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
) -> GroupMerge:
    """Task arithmetic: θ = θ₀ + Σ wᵢ·δᵢ (Ilharco et al., https://arxiv.org/abs/2212.04089).

    The weights are the scaling coefficients themselves: weights summing to 1 over identical
    deltas give that delta back; ``[1, -1]`` adds one task and removes the other.
    """
    return merge_each_key(group, base, deltas, weights, scaled_sum(weights))


@register("linear")
def linear(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
) -> GroupMerge:
    """Weighted average of the deltas, θ = θ₀ + Σ wᵢ·δᵢ / Σ |wᵢ| (model soups,
    https://arxiv.org/abs/2203.05482).

    Normalising by Σ|wᵢ| rather than Σwᵢ makes the weights relative (any positive scale gives
    the same model) while a task with a negative weight is still subtracted, not re-added.
    """
    total = sum(abs(w) for w in weights)
    return merge_each_key(group, base, deltas, weights, scaled_sum([w / total for w in weights]))


@register("magnitude_prune")
def magnitude_prune(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    *,
    density: float = 0.2,
) -> GroupMerge:
    """Task arithmetic over magnitude-pruned deltas: TIES's trim step without its sign election
    (PEFT's ``magnitude_prune``).

    Args:
        density: fraction of each delta's entries kept, by magnitude, per weight.
    """
    check_density(density)
    merge_key = elementwise(weights, lambda _k, d, w: sparse_merge(d, w, prune="magnitude", density=density))
    return merge_each_key(group, base, deltas, weights, merge_key)


@register("ties")
def ties(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    *,
    density: float = 0.2,
    majority_sign_method: SignMethod = "total",
) -> GroupMerge:
    """TIES-merging: trim to the top ``density`` by magnitude, elect a sign per entry, average the
    agreeing tasks (Yadav et al., https://arxiv.org/abs/2306.01708).

    Args:
        density: fraction of each delta's entries kept, by magnitude, per weight.
        majority_sign_method: ``"total"`` (sign of the weighted sum) or ``"frequency"``.
    """
    check_density(density)
    merge_key = elementwise(
        weights, lambda _k, d, w: sparse_merge(d, w, prune="magnitude", density=density, elect=majority_sign_method)
    )
    return merge_each_key(group, base, deltas, weights, merge_key)


@register("dare_linear")
def dare_linear(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    *,
    density: float = 0.5,
    seed: int = 0,
) -> GroupMerge:
    """DARE: drop each delta entry with probability 1 − ``density``, rescale the rest by
    1/``density``, then task arithmetic (Yu et al., https://arxiv.org/abs/2311.03099).

    Args:
        density: probability of keeping an entry.
        seed: seeds one generator per weight (:func:`key_generator`): same seed, same model.
    """
    check_density(density)
    merge_key = elementwise(
        weights, lambda k, d, w: sparse_merge(d, w, prune="random", density=density, generator=key_generator(seed, k))
    )
    return merge_each_key(group, base, deltas, weights, merge_key)


@register("dare_ties")
def dare_ties(
    group: Group,
    base: Mapping[str, torch.Tensor],
    deltas: Sequence[Mapping[str, Delta]],
    weights: Sequence[float],
    *,
    density: float = 0.5,
    seed: int = 0,
    majority_sign_method: SignMethod = "total",
) -> GroupMerge:
    """DARE's drop-and-rescale followed by TIES's sign election and disjoint mean
    (https://arxiv.org/abs/2311.03099, https://arxiv.org/abs/2306.01708).

    Args:
        density: probability of keeping an entry.
        seed: seeds one generator per weight (:func:`key_generator`): same seed, same model.
        majority_sign_method: ``"total"`` or ``"frequency"``.
    """
    check_density(density)
    merge_key = elementwise(
        weights,
        lambda k, d, w: sparse_merge(
            d, w, prune="random", density=density, elect=majority_sign_method, generator=key_generator(seed, k)
        ),
    )
    return merge_each_key(group, base, deltas, weights, merge_key)
