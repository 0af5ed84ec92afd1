"""Scoring a VLM's answers: grounding (IoU, acc@0.5) and head pose (MAE), strict validity.

Answers are parsed by the family's strict parsers; an answer that does not parse is counted
as *invalid* (and as a miss for grounding) — never repaired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.evaluate.headpose import headpose_metrics
from pipeline.vlm.boxes import iou
from pipeline.vlm.examples import generate_answers, grounding_example, headpose_example
from pipeline.vlm.families import VLMFamily


def _answers(
    model: Any, processor: Any, family: VLMFamily, examples: Sequence[Any], batch_size: int, max_new_tokens: int
) -> list[str]:
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        out += generate_answers(
            model, processor, family, [e.image for e in chunk], [e.prompt for e in chunk], max_new_tokens=max_new_tokens
        )
    return out


def mean_relative_box(rows: Sequence[dict]) -> tuple[float, float, float, float]:
    """The average head box as fractions of the frame: the "always answer the same box" baseline."""
    rel = [np.asarray(r["head_box"], dtype=float) / ([r["frame_width"], r["frame_height"]] * 2) for r in rows]
    return tuple(float(v) for v in np.mean(rel, axis=0))  # type: ignore[return-value]


def _iou_scores(ious: Sequence[float]) -> dict[str, float]:
    n = len(ious)
    return {
        "acc_iou50": float(np.mean([v >= 0.5 for v in ious])) if n else 0.0,
        "acc_iou75": float(np.mean([v >= 0.75 for v in ious])) if n else 0.0,
        "mean_iou": float(np.mean(ious)) if n else 0.0,
    }


def grounding_scores(
    boxes: Sequence[Sequence[float] | None],
    truths: Sequence[Sequence[float]],
    sizes: Sequence[tuple[int, int]],
    constant_box: Sequence[float] | None = None,
) -> dict[str, float]:
    """Scores of parsed grounding answers against the true head boxes.

    Args:
        boxes: parsed answer boxes in image pixels, ``None`` for an invalid answer.
        truths: the true boxes.
        sizes: image ``(width, height)`` per row.
        constant_box: a box as fractions of the frame (``mean_relative_box`` of the training
            rows): the same rows are also scored as if every answer were that box, so that a
            model which ignores the image shows as one that does not beat it.

    Returns:
        ``n``, ``acc_iou50`` and ``acc_iou75`` (fraction with IoU ≥ 0.5 / 0.75; invalid answers
        count as misses), ``mean_iou`` (invalid → 0), ``invalid_rate``; with ``constant_box``
        also ``constant_box_acc_iou50``, ``constant_box_acc_iou75``, ``constant_box_mean_iou``.
    """
    ious = [0.0 if b is None else iou(b, t) for b, t in zip(boxes, truths, strict=True)]
    n = len(ious)
    out = {"n": n, **_iou_scores(ious), "invalid_rate": sum(b is None for b in boxes) / n if n else 0.0}
    if constant_box is not None:
        const = [
            iou(tuple(np.asarray(constant_box) * [w, h, w, h]), t) for (w, h), t in zip(sizes, truths, strict=True)
        ]
        out.update({f"constant_box_{k}": v for k, v in _iou_scores(const).items()})
    return out


def evaluate_grounding(
    model: Any,
    processor: Any,
    family: VLMFamily,
    rows: Sequence[dict],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 40,
    constant_box: Sequence[float] | None = None,
) -> dict[str, float]:
    """Ask "where is the head?" on each row's frame; :func:`grounding_scores` against ``head_box``."""
    examples = [grounding_example(r, family) for r in rows]
    answers = _answers(model, processor, family, examples, batch_size, max_new_tokens)
    boxes = [family.parse_grounding(text, *ex.size) for ex, text in zip(examples, answers, strict=True)]
    return grounding_scores(boxes, [ex.target for ex in examples], [ex.size for ex in examples], constant_box)


def headpose_answers(
    model: Any,
    processor: Any,
    family: VLMFamily,
    rows: Sequence[dict],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 40,
) -> list[dict[str, Any]]:
    """Ask the head pose of the head at each row's ``head_box``; one record per row.

    Each record: ``source_id``, ``answer`` (the text as generated), ``pose`` (the parsed
    ``(yaw, pitch, roll)`` or ``None`` when the answer is invalid) and ``true``.
    """
    examples = [headpose_example(r, family) for r in rows]
    answers = _answers(model, processor, family, examples, batch_size, max_new_tokens)
    return [
        {
            "source_id": ex.source_id,
            "answer": text,
            "pose": family.parse_headpose(text),
            "true": tuple(float(v) for v in ex.target),
        }
        for ex, text in zip(examples, answers, strict=True)
    ]


def evaluate_headpose(
    model: Any,
    processor: Any,
    family: VLMFamily,
    rows: Sequence[dict],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 40,
) -> dict[str, Any]:
    """Head-pose metrics (``pipeline.evaluate.headpose.headpose_metrics``) of the model's answers."""
    records = headpose_answers(model, processor, family, rows, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return headpose_metrics([r["pose"] for r in records], [r["true"] for r in records])
