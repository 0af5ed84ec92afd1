"""Number tokens of the tiny VLM: one token per integer 0–99 (Pix2Seq-style), and their loss.

Why: read out character by character, a number costs the tiny model several dependent
decisions (sign, tens, units, decimal) and its loss sat on a plateau at chance MAE while a
linear probe of the same image features was well below chance (docs/vlm_learning.md). With one
token per value a box corner or an angle is a single classification over the image features.

The same 100 tokens serve both tasks: grounding writes box corners on the 00–99 grid with them,
head pose writes each angle as a sign character and its magnitude in whole degrees. Grounding
pre-training therefore already trains their embeddings and output rows, which the head-pose
LoRA adapters then reuse.

:func:`ordinal_loss` replaces the one-hot target of a number token by a Gaussian over its
neighbours (``sigma`` in units of the value): predicting 41 for 40 then costs less than 90, so
the output rows of neighbouring values become alike and few samples per value are enough.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

NUMBER_MAX = 99  # 00–99: the tiny box grid, and |angle| ≤ 99° (the AFLW2000 test protocol)
NUMBER_TOKENS: tuple[str, ...] = tuple(f"<{i}>" for i in range(NUMBER_MAX + 1))
NUMBER_PATTERN = r"<(0|[1-9][0-9]?)>"  # one number token, its value as the group
_NUMBER_RE = re.compile(NUMBER_PATTERN)


def number_token(value: int) -> str:
    """The token of integer ``value`` (0–99).

    Raises:
        ValueError: outside 0–99.
    """
    if not 0 <= value <= NUMBER_MAX:
        raise ValueError(f"{value} has no number token (0–{NUMBER_MAX})")
    return NUMBER_TOKENS[value]


def number_value(token: str) -> int | None:
    """The value of a number token, ``None`` if ``token`` is not exactly one."""
    match = _NUMBER_RE.fullmatch(token)
    return None if match is None else int(match.group(1))


def number_token_ids(tokenizer: Any) -> list[int] | None:
    """Ids of ``<0>``…``<99>`` in order, or ``None`` when the tokenizer has no number tokens
    (real checkpoints): the ordinal loss then falls back to plain cross-entropy."""
    unk = tokenizer.unk_token_id
    ids = tokenizer.convert_tokens_to_ids(list(NUMBER_TOKENS))
    if any(i is None or i == unk for i in ids):
        return None
    return list(ids)


def soft_targets(vocab_size: int, number_ids: Sequence[int], sigma: float) -> torch.Tensor:
    """``vocab × vocab`` target distributions: one-hot rows, except a number token's row is a
    normalised Gaussian (``sigma`` values wide) over the number tokens."""
    table = torch.eye(vocab_size)
    if sigma <= 0:
        return table
    ids = torch.as_tensor(list(number_ids))
    values = torch.arange(len(ids), dtype=torch.float32)
    gauss = torch.exp(-0.5 * ((values[:, None] - values[None, :]) / sigma) ** 2)
    gauss = gauss / gauss.sum(dim=1, keepdim=True)
    table[ids] = 0.0
    table[ids[:, None], ids[None, :]] = gauss
    return table


def ordinal_loss(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Next-token cross-entropy against soft targets (``soft_targets``), mean over labelled positions.

    Args:
        logits: ``B × T × V`` model outputs.
        labels: ``B × T`` token ids, ``ignore_index`` where there is no loss (as for the model's
            own loss, position ``t`` predicts ``labels[t + 1]``).
        targets: ``V × V`` target table.
    """
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    keep = labels != ignore_index
    logp = torch.log_softmax(logits[keep], dim=-1)
    return -(targets.to(logp.device)[labels[keep]] * logp).sum(-1).mean()
