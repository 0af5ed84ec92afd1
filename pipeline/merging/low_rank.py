"""Deltas kept as low-rank factors: ``ΔW = b·a``, never formed in full unless a method needs it.

A LoRA delta is rank ``r`` (16) in a matrix of 4096 × 11008: forming it costs 45 M float32 writes
per task and module, while everything ``layer_wta``, task arithmetic and linear merging need can
be had from the factors — Frobenius inner products (``⟨b₁a₁, b₂a₂⟩ = Σ (b₁ᵀb₂) ⊙ (a₁a₂ᵀ)``), weighted
sums (concatenate the factors) and the final ``W += b·a`` (one matmul per row chunk of ``W``). This
keeps a 7B merge close to the cost of reading and writing the weights. Element-wise methods
(TIES, DARE, magnitude pruning) call :func:`dense`.

A *delta* (:data:`Delta`) is either a float32 tensor or a :class:`LowRank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

CHUNK = 1 << 20  # elements per row chunk of a weight: float32 temporaries stay a few MB


@dataclass(frozen=True)
class LowRank:
    """``ΔW = b @ a`` (float32): ``b`` is rows × k, ``a`` is k × cols."""

    b: torch.Tensor
    a: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.b.shape[0], self.a.shape[1]))

    def dense(self) -> torch.Tensor:
        return self.b @ self.a


Delta = torch.Tensor | LowRank


def dense(delta: Delta) -> torch.Tensor:
    """The full float32 tensor of a delta."""
    return delta.dense() if isinstance(delta, LowRank) else delta.float()


def row_chunks(rows: int, cols: int) -> range:
    """Start rows of chunks of about :data:`CHUNK` elements."""
    return range(0, rows, max(1, CHUNK // max(cols, 1)))


def combine(terms: Sequence[tuple[float, Delta]], shape: Sequence[int]) -> Delta:
    """``Σ cᵢ·δᵢ`` — low-rank (factors concatenated) when every term is, else a dense tensor.

    A lone term with coefficient 1 is returned as it is (no copy); no term gives zeros.
    """
    terms = [(c, d) for c, d in terms if c != 0]
    if not terms:
        return torch.zeros(tuple(shape), dtype=torch.float32)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    if all(isinstance(d, LowRank) for _, d in terms):
        return LowRank(torch.cat([d.b * c for c, d in terms], dim=1), torch.cat([d.a for _, d in terms], dim=0))
    out = dense(terms[0][1]) * terms[0][0]
    for c, d in terms[1:]:
        if isinstance(d, LowRank):
            out.addmm_(d.b, d.a, alpha=c)
        else:
            out.add_(d, alpha=c)
    return out


def low_rank_inner(x: LowRank, y: LowRank) -> float:
    """Frobenius inner product of two low-rank deltas from their factors (float64)."""
    return float(((x.b.T.double() @ y.b.double()) * (x.a.double() @ y.a.T.double())).sum())


def dense_low_rank_inners(tensor: torch.Tensor, factors: Sequence[LowRank]) -> list[float]:
    """``⟨tensor, bᵢ·aᵢ⟩`` for every low-rank delta, in one pass over ``tensor``'s rows.

    ``⟨T, b·a⟩ = Σ (bᵀ·T) ⊙ a``: the products ``bᵢᵀ·T`` of all deltas are one matmul per row chunk
    with the factors concatenated, and ``T`` (e.g. a bfloat16 base weight) is converted to float32
    a chunk at a time.
    """
    bs = torch.cat([f.b for f in factors], dim=1)
    projected = torch.zeros(bs.shape[1], tensor.shape[1], dtype=torch.float64)
    chunks = row_chunks(*tensor.shape)
    buf = torch.empty(chunks.step, tensor.shape[1])
    for start in chunks:
        rows = tensor[start : start + chunks.step]
        projected += (bs[start : start + chunks.step].T @ buf[: rows.shape[0]].copy_(rows)).double()
    inners, offset = [], 0
    for f in factors:
        k = f.b.shape[1]
        inners.append(float((projected[offset : offset + k] * f.a.double()).sum()))
        offset += k
    return inners


def dense_gram(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 Gram matrix of dense tensors of one shape, one chunked pass (float64 sums: with
    ``similarity="weight"`` cosines sit within ~1e-6 of 1)."""
    flat = [t.reshape(-1) for t in tensors]
    numel = flat[0].numel()
    total = torch.zeros(len(flat), len(flat), dtype=torch.float64)
    buf = torch.empty(len(flat), min(CHUNK, numel), dtype=torch.float64)
    for start in range(0, numel, CHUNK):
        stop = min(start + CHUNK, numel)
        x = buf[:, : stop - start]
        for row, f in zip(x, flat, strict=True):
            row.copy_(f[start:stop])
        total += x @ x.T
    return total


def gram(pieces: Sequence[Delta | None]) -> torch.Tensor:
    """Float64 Gram matrix of same-shaped deltas (``None`` = zero), using factors where it can.

    Dense–dense products take one chunked pass, low-rank–low-rank products cost only the factors,
    and dense–low-rank products one pass per dense tensor (:func:`dense_low_rank_inners`).
    """
    n = len(pieces)
    g = torch.zeros(n, n, dtype=torch.float64)
    dense_idx = [i for i, p in enumerate(pieces) if isinstance(p, torch.Tensor)]
    low_idx = [i for i, p in enumerate(pieces) if isinstance(p, LowRank)]
    if dense_idx:
        idx = torch.tensor(dense_idx)
        g[idx[:, None], idx[None, :]] = dense_gram([pieces[i] for i in dense_idx])
    for x, i in enumerate(low_idx):
        for j in low_idx[x:]:
            g[i, j] = g[j, i] = low_rank_inner(pieces[i], pieces[j])
    if low_idx:
        for i in dense_idx:
            for j, value in zip(low_idx, dense_low_rank_inners(pieces[i], [pieces[j] for j in low_idx]), strict=True):
                g[i, j] = g[j, i] = value
    return g


def squared_norm(delta: Delta) -> float:
    """``‖δ‖²_F`` (from the factors for a low-rank delta)."""
    if isinstance(delta, LowRank):
        return low_rank_inner(delta, delta)
    return float(torch.linalg.vector_norm(delta.float())) ** 2


def add_into_(weight: torch.Tensor, delta: Delta) -> None:
    """``weight += delta`` in place, in float32 row chunks rounded once to the weight's dtype."""
    if delta.shape != weight.shape:
        raise ValueError(f"delta of shape {tuple(delta.shape)} for a weight of shape {tuple(weight.shape)}")
    if weight.dim() != 2:
        weight.copy_(weight.float() + dense(delta))
        return
    chunks = row_chunks(*weight.shape)
    # One float32 buffer reused for every chunk of a low-precision weight: a fresh tensor per
    # chunk would cost a round of page faults each time.
    buf = None if weight.dtype == torch.float32 else torch.empty(chunks.step, weight.shape[1])
    for start in chunks:
        rows = weight[start : start + chunks.step]
        chunk = rows if buf is None else buf[: rows.shape[0]].copy_(rows)
        if isinstance(delta, LowRank):
            chunk.addmm_(delta.b[start : start + chunks.step], delta.a)
        else:
            chunk.add_(delta[start : start + chunks.step])
        if buf is not None:
            rows.copy_(chunk)
