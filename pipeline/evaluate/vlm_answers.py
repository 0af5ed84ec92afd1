"""Scoring a VLM's answers: grounding (IoU, acc@0.5) and head pose (MAE), strict validity.

Answers are parsed by the family's strict parsers; an answer that does not parse is counted
as *invalid* (and as a miss for grounding) — never repaired (DESIGN §4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.vlm.boxes import iou
from pipeline.vlm.examples import generate_answers, grounding_example, headpose_example
from pipeline.vlm.families import VLMFamily


def _answers(model: Any, processor: Any, family: VLMFamily, examples: Sequence[Any], batch_size: int,
             max_new_tokens: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        out += generate_answers(model, processor, family, [e.image for e in chunk], [e.prompt for e in chunk],
                                max_new_tokens=max_new_tokens)
    return out


def evaluate_grounding(model: Any, processor: Any, family: VLMFamily, rows: Sequence[dict], *,
                       batch_size: int = 32, max_new_tokens: int = 40) -> dict[str, float]:
    """Ask "where is the head?" on each row's frame; score against ``head_box``.

    Returns:
        ``n``, ``acc_iou50`` (fraction with IoU ≥ 0.5; invalid answers count as misses),
        ``mean_iou`` (invalid → 0), ``invalid_rate``.
    """
    examples = [grounding_example(r, family) for r in rows]
    answers = _answers(model, processor, family, examples, batch_size, max_new_tokens)
    ious, invalid = [], 0
    for ex, text in zip(examples, answers, strict=True):
        box = family.parse_grounding(text, *ex.size)
        if box is None:
            invalid += 1
            ious.append(0.0)
        else:
            ious.append(iou(box, ex.target))
    n = len(examples)
    return {"n": n, "acc_iou50": float(np.mean([v >= 0.5 for v in ious])) if n else 0.0,
            "mean_iou": float(np.mean(ious)) if n else 0.0, "invalid_rate": invalid / n if n else 0.0}


def evaluate_headpose(model: Any, processor: Any, family: VLMFamily, rows: Sequence[dict], *,
                      batch_size: int = 32, max_new_tokens: int = 40) -> dict[str, Any]:
    """Ask the head pose of the head at ``head_box``; MAE over the valid answers.

    Returns:
        ``n``, ``invalid_rate``, ``mae_yaw``, ``mae_pitch``, ``mae_roll``, ``mae`` (their mean),
        computed on valid answers (``None`` when none is valid).
    """
    examples = [headpose_example(r, family) for r in rows]
    answers = _answers(model, processor, family, examples, batch_size, max_new_tokens)
    errors, invalid = [], 0
    for ex, text in zip(examples, answers, strict=True):
        pose = family.parse_headpose(text)
        if pose is None:
            invalid += 1
            continue
        errors.append(np.abs(np.asarray(pose, dtype=float) - np.asarray(ex.target, dtype=float)))
    n = len(examples)
    out: dict[str, Any] = {"n": n, "invalid_rate": invalid / n if n else 0.0}
    if errors:
        mae = np.asarray(errors).mean(axis=0)
        out.update(mae_yaw=float(mae[0]), mae_pitch=float(mae[1]), mae_roll=float(mae[2]), mae=float(mae.mean()))
    else:  # no valid answer: no error to report (JSON has no NaN)
        out.update(mae_yaw=None, mae_pitch=None, mae_roll=None, mae=None)
    return out
