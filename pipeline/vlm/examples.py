"""Parquet head-pose rows → VLM examples → model inputs; batched greedy answers.

Two tasks per row (schema: ``pipeline.records.headpose``):

* **grounding** — image: the stored frame; prompt: "where is the head?"; answer: ``head_box`` in
  the family's box syntax;
* **headpose** — image: the stored frame; prompt: "what is the pose of the head at <box>?";
  answer: ``[[yaw,pitch,roll]]`` (``pipeline.vlm.prompts``).

:func:`collate` builds training inputs whose ``labels`` keep only the answer tokens and the end
token; everything else (image tokens, prompt, padding) is ``-100``. Loss on the answer alone is what
lets the tiny model leave the plateau where it ignores the image (DESIGN §6).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from pipeline.imaging import decode_jpeg
from pipeline.vlm.boxes import Box
from pipeline.vlm.families import VLMFamily, tokenizer_of

Task = Literal["grounding", "headpose"]
TASKS: tuple[Task, ...] = ("grounding", "headpose")
IGNORE_INDEX = -100  # torch's cross-entropy ignore_index: no loss on these positions


@dataclass(frozen=True)
class Example:
    """One question about one image, with its target.

    Attributes:
        task: ``grounding`` or ``headpose``.
        image: H×W×3 uint8 RGB, the stored frame.
        prompt: the question (family syntax).
        answer: the target answer string (family syntax, no end token).
        target: the ground truth behind ``answer`` — the head box in stored-frame pixels for
            grounding, ``(yaw, pitch, roll)`` in degrees for head pose — for scoring answers.
        source_id: the row's ``source_id``.
    """

    task: Task
    image: np.ndarray
    prompt: str
    answer: str
    target: tuple[float, ...]
    source_id: str

    @property
    def size(self) -> tuple[int, int]:
        """Image ``(width, height)``."""
        return self.image.shape[1], self.image.shape[0]


def _frame(row: Mapping[str, Any]) -> tuple[np.ndarray, Box, str]:
    """Decoded frame and head box of a row, checked against the stored frame size.

    Raises:
        ValueError: naming the row and field when a field is missing or inconsistent.
    """
    sid = str(row.get("source_id", "?"))
    for name in ("frame_jpeg", "frame_width", "frame_height", "head_box"):
        if row.get(name) is None:
            raise ValueError(f"row {sid}: field {name!r} is missing or null")
    image = decode_jpeg(row["frame_jpeg"])
    if image.shape[:2] != (row["frame_height"], row["frame_width"]):
        raise ValueError(
            f"row {sid}: frame_jpeg is {image.shape[1]}×{image.shape[0]} but frame_width×frame_height says "
            f"{row['frame_width']}×{row['frame_height']}"
        )
    box = tuple(float(v) for v in row["head_box"])
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"row {sid}: field 'head_box' is not a non-empty [x0, y0, x1, y1] box: {row['head_box']}")
    return image, box, sid


def grounding_example(row: Mapping[str, Any], family: VLMFamily) -> Example:
    """The grounding example of a head-pose row: find the head box.

    Args:
        row: one Parquet row as a mapping (``table.to_pylist()`` item).
        family: decides the prompt wording and the box syntax of the answer.

    Returns:
        The example; ``target`` is the head box in stored-frame pixels.

    Raises:
        ValueError: when a needed field is missing or inconsistent (message names it).
    """
    image, box, sid = _frame(row)
    height, width = image.shape[:2]
    return Example(
        task="grounding",
        image=image,
        prompt=family.grounding_prompt(),
        answer=family.grounding_answer(box, width, height),
        target=box,
        source_id=sid,
    )


def headpose_example(row: Mapping[str, Any], family: VLMFamily) -> Example:
    """The head-pose example of a row: the pose of the head at its (given) box.

    Args:
        row: one Parquet row as a mapping.
        family: decides the prompt wording and the box syntax in the prompt.

    Returns:
        The example; ``target`` is ``(yaw, pitch, roll)`` in degrees.

    Raises:
        ValueError: when a needed field is missing or inconsistent, or an angle cannot be
            written in the answer format (non-finite, beyond ±180°).
    """
    image, box, sid = _frame(row)
    height, width = image.shape[:2]
    pose = tuple(float(row[name]) for name in ("yaw", "pitch", "roll"))
    try:
        answer = family.headpose_answer(*pose)
    except ValueError as err:
        raise ValueError(f"row {sid}: {err}") from None
    return Example(
        task="headpose",
        image=image,
        prompt=family.headpose_prompt(box, width, height),
        answer=answer,
        target=pose,
        source_id=sid,
    )


_BUILDERS = {"grounding": grounding_example, "headpose": headpose_example}


def examples_from_rows(
    rows: Iterable[Mapping[str, Any]], family: VLMFamily, tasks: Sequence[Task] = TASKS
) -> list[Example]:
    """Examples for every row and every task in ``tasks`` (row-major order).

    Args:
        rows: Parquet rows as mappings (e.g. ``read_records(folder).to_pylist()``).
        family: the VLM family.
        tasks: which tasks to make per row.

    Raises:
        KeyError: for an unknown task name (lists the valid ones).
    """
    unknown = [t for t in tasks if t not in _BUILDERS]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
    return [_BUILDERS[task](row, family) for row in rows for task in tasks]


def collate(
    examples: Sequence[Example], family: VLMFamily, processor: Any, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Training inputs for a batch: prompt + answer + end token, loss on the answer only.

    The prompt goes through the processor (which expands the image placeholder) and the answer is
    tokenised on its own and appended, so the answer's first token is known exactly whatever the
    tokenizer merges; rows are right-padded.

    Args:
        examples: the batch.
        family: the VLM family (chat template, end token).
        processor: its processor.
        max_length: fail when a sequence is longer (e.g. the model's ``max_position_embeddings``).

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (``-100`` except answer + end tokens) and the
        processor's image tensors (``pixel_values``, and e.g. ``image_grid_thw``).

    Raises:
        ValueError: when a sequence exceeds ``max_length``.
    """
    tok = tokenizer_of(processor)
    inputs = family.prompt_inputs(processor, [e.image for e in examples], [e.prompt for e in examples], "right")
    end = family.end_text(processor)
    answers = tok([e.answer + end for e in examples], add_special_tokens=False)["input_ids"]
    rows, labels = [], []
    for ids, mask, answer in zip(inputs["input_ids"], inputs["attention_mask"], answers, strict=True):
        prompt = ids[mask.bool()]
        answer = torch.tensor(answer, dtype=prompt.dtype)
        rows.append(torch.cat([prompt, answer]))
        labels.append(torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]))
    longest = max(len(r) for r in rows)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a training sequence has {longest} tokens, more than max_length={max_length}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    batch["input_ids"] = torch.stack([_pad(r, longest, pad_id) for r in rows])
    batch["attention_mask"] = torch.stack([_pad(torch.ones_like(r), longest, 0) for r in rows])
    batch["labels"] = torch.stack([_pad(lab, longest, IGNORE_INDEX) for lab in labels])
    return batch


def _pad(row: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.cat([row, row.new_full((length - len(row),), value)])


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    family: VLMFamily,
    images: Sequence[Any],
    prompts: Sequence[str],
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy answers for a batch of (image, prompt) pairs.

    Prompts are left-padded so every row's answer starts at the same position. The text of each
    answer is cut at the first end token and returned *as generated* (special tokens such as
    Qwen's ``<|box_start|>`` kept, nothing stripped): the parsers decide what is valid.

    Args:
        model: the VLM (put in eval mode here).
        processor: its processor.
        family: the VLM family.
        images: one image per prompt.
        prompts: the questions.
        max_new_tokens: generation budget; an answer that needs more comes back truncated
            (and so fails to parse).

    Returns:
        One answer string per prompt.
    """
    tok = tokenizer_of(processor)
    model.eval()
    inputs = family.prompt_inputs(processor, list(images), list(prompts), "left")
    stop = family.end_token_ids(processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=pad_id,
    )
    new = out[:, inputs["input_ids"].shape[1] :]
    answers = []
    for row in new.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        answers.append(tok.decode(row[:cut], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return answers
