"""Parquet head-pose rows → VLM examples → model inputs; batched greedy answers.

Two tasks per row (schema: ``pipeline.records.headpose``):

* **grounding** — image: the stored frame; prompt: "where is the head?"; answer: ``head_box`` in
  the family's box syntax;
* **headpose** — image: the stored frame; prompt: "what is the pose of the head at <box>?";
  answer: ``[[yaw,pitch,roll]]`` (``pipeline.vlm.prompts``).

:func:`random_crop` moves and rescales the head (the synthetic frames place it alike, so a
constant box already scores acc@0.5 ≈ 0.84). :func:`collate` builds training inputs whose ``labels`` keep only the answer tokens and the end
token; everything else (image tokens, prompt, padding) is ``-100``. Loss on the answer alone is what
lets the tiny model leave the plateau where it ignores the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from pipeline.baselines.augment import AugmentConfig, apply_affine, blur, draw_affine, photometric, rotate_pose
from pipeline.imaging import decode_jpeg, encode_jpeg
from pipeline.vlm.boxes import Box
from pipeline.vlm.families import VLMFamily, tokenizer_of
from pipeline.vlm.numbers import number_token

Task = Literal["grounding", "headpose", "facepoints"]
TASKS: tuple[Task, ...] = ("grounding", "headpose")
IGNORE_INDEX = -100  # torch's cross-entropy ignore_index: no loss on these positions


@dataclass(frozen=True)
class Example:
    """One question about one image, with its target.

    Attributes:
        task: ``grounding`` or ``headpose``.
        image: H×W×3 uint8 RGB: the stored frame, or a crop of it (:func:`random_crop`).
        prompt: the question (family syntax).
        answer: the target answer string (family syntax, no end token).
        target: the ground truth behind ``answer`` — the head box in pixels of ``image`` for
            grounding, ``(yaw, pitch, roll)`` in degrees for head pose — for scoring answers.
        source_id: the row's ``source_id``.
        head_box: the head box named in a head-pose prompt (pixels of ``image``); ``None`` for grounding.
    """

    task: Task
    image: np.ndarray
    prompt: str
    answer: str
    target: tuple[float, ...]
    source_id: str
    head_box: tuple[float, ...] | None = None

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


def _grounding(image: np.ndarray, box: Box, family: VLMFamily, sid: str) -> Example:
    height, width = image.shape[:2]
    return Example(
        task="grounding",
        image=image,
        prompt=family.grounding_prompt(),
        answer=family.grounding_answer(box, width, height),
        target=box,
        source_id=sid,
    )


def _headpose(image: np.ndarray, box: Box, pose: tuple[float, ...], family: VLMFamily, sid: str) -> Example:
    height, width = image.shape[:2]
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
        head_box=box,
    )


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
    return _grounding(image, box, family, sid)


def face_window(
    box: Box, context: float, rng: np.random.Generator | None = None, jitter: float = 0.0, zoom: float = 1.0
) -> tuple[int, int, int, int]:
    """A square window of side ``context`` × the box's longer side, centred on the box.

    With ``rng``, the side is scaled by up to ``1 ± jitter`` and the centre moved by up to
    ``jitter / 2`` of the side (training augmentation: the box given at test time is a detector's
    or a protocol's, never exactly centred). With ``zoom`` > 1 the side is first multiplied by a
    log-uniform factor in ``[1, zoom]``: the face then fills from all of the crop down to
    ``1 / zoom`` of it, as under a looser box convention (BIWI's former 200 mm head square held
    the face at about half the side that 300W-LP's landmark box does: docs/vlm_learning.md, run I).
    The window may reach outside the image.
    """
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = context * max(box[2] - box[0], box[3] - box[1])
    if rng is not None and zoom > 1:
        side *= math.exp(rng.uniform(0.0, math.log(zoom)))
    if rng is not None and jitter > 0:
        side *= rng.uniform(1 - jitter, 1 + jitter)
        cx += rng.uniform(-jitter, jitter) * side / 2
        cy += rng.uniform(-jitter, jitter) * side / 2
    side = max(2, round(side))
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    return x0, y0, x0 + side, y0 + side


def face_crop(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``image[y0:y1, x0:x1]`` with black where the window leaves the image (a square stays
    square, so the processor's resize does not squash the face)."""
    x0, y0, x1, y1 = window
    height, width = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


# Target brightness and contrast of a standardised face crop (0–255 scale).
CROP_MEAN, CROP_STD = 128.0, 50.0


def standardise_crop(crop: np.ndarray) -> np.ndarray:
    """The crop with its pixels shifted and scaled to mean ``CROP_MEAN``, std ``CROP_STD``
    (over all channels, so colours keep their ratios), as uint8.

    Why: BIWI's frames are darker and flatter than 300W-LP's renders; the CNN baseline flipped
    39 % of its BIWI predictions until its input was standardised per image
    (docs/baseline_learning.md), and the tiny VLM, which normalises with CLIP's fixed
    statistics, answered BIWI worse than chance while beating it on AFLW2000
    (docs/vlm_learning.md, run F). Together with run G's other changes it did not change that
    BIWI result. The same crop is asked in training and evaluation.
    """
    pixels = crop.astype(np.float32)
    std = float(pixels.std())
    if std < 1e-3:  # a uniform crop (the blank-image ablation) stays uniform, mid-grey
        return np.full_like(crop, int(CROP_MEAN))
    out = (pixels - float(pixels.mean())) * (CROP_STD / std) + CROP_MEAN
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def augment_face(
    crop: np.ndarray, box: Box, pose: tuple[float, float, float], rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, Box, tuple[float, float, float]]:
    """The CNN baseline's training augmentation on a head-pose face crop, with the box and pose
    moved along: in-plane rotation (pose updated exactly), zoom and shift, blur, colour.

    Why: the face-crop vision features trained without it read BIWI at 0.79× chance; the
    baseline's geometric augmentation is what carries a 300W-LP model to BIWI
    (docs/vlm_learning.md, run K). The box keeps its size × zoom about its moved centre (the
    landmark box of a turned face is not recoverable from the box alone).
    """
    theta, scale, dx, dy = draw_affine(rng, cfg, (crop.shape[1], crop.shape[0]))
    image = blur(apply_affine(Image.fromarray(crop), theta, scale, dx, dy), rng, cfg)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    out = (photometric(pixels, rng, cfg)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    # The box centre goes where the picture's point under it went (rotation and zoom about the
    # crop's centre, then the shift); its half-sides scale with the zoom.
    cx, cy = (crop.shape[1] - 1) / 2.0, (crop.shape[0] - 1) / 2.0
    bx, by = (box[0] + box[2]) / 2 - cx, (box[1] + box[3]) / 2 - cy
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    # Counter-clockwise on screen (y down): x' = c·x + s·y, y' = −s·x + c·y.
    nx, ny = cx + dx + scale * (c * bx + s * by), cy + dy + scale * (-s * bx + c * by)
    hw, hh = scale * (box[2] - box[0]) / 2, scale * (box[3] - box[1]) / 2
    return out, (nx - hw, ny - hh, nx + hw, ny + hh), rotate_pose(*pose, theta)


def headpose_example(
    row: Mapping[str, Any],
    family: VLMFamily,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
    zoom: float = 1.0,
    augment: AugmentConfig | None = None,
) -> Example:
    """The head-pose example of a row: the pose of the head at its (given) box.

    A family with ``headpose_context`` is asked on a square crop around the box
    (:func:`face_window`); the box in the prompt is then in the crop's pixels.

    Args:
        row: one Parquet row as a mapping.
        family: decides the prompt wording and the box syntax in the prompt.
        rng: with ``jitter``, draws the crop's scale and shift (training); ``None``: the fixed crop.
        jitter: crop augmentation strength (:func:`face_window`).
        zoom: with ``rng``, the crop's context is widened by a random factor up to ``zoom``
            (:func:`face_window`; 1 = off).
        augment: with ``rng``, the face crop's :func:`augment_face` (``None`` or disabled: off).

    Returns:
        The example; ``target`` is ``(yaw, pitch, roll)`` in degrees.

    Raises:
        ValueError: when a needed field is missing or inconsistent, or an angle cannot be
            written in the answer format (non-finite, beyond ±180°).
    """
    image, box, sid = _frame(row)
    pose = tuple(float(row[name]) for name in ("yaw", "pitch", "roll"))
    if family.headpose_context is not None:
        window = face_window(box, family.headpose_context, rng, jitter, zoom)
        crop = face_crop(image, window)
        box = (box[0] - window[0], box[1] - window[1], box[2] - window[0], box[3] - window[1])
        if rng is not None and augment is not None and augment.enabled:
            crop, box, pose = augment_face(crop, box, pose, rng, augment)
        image = standardise_crop(crop)
    return _headpose(image, box, pose, family, sid)


# Five facial points out of the 68-point (iBUG) layout: the two eye centres, the nose tip and
# the mouth corners — few enough for a short answer, and together they fix the head's rotation.
FACEPOINT_GROUPS: tuple[tuple[int, ...], ...] = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))
FACEPOINTS_PROMPT = "Where are the eyes, nose and mouth of the person at {box}? answer in [[x,y,...]] format."


def facepoints_example(
    row: Mapping[str, Any],
    family: VLMFamily,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
    zoom: float = 1.0,
) -> Example | None:
    """Face-geometry pre-training question: where are the eyes, nose and mouth of the head at its box?

    Asked on the same crop around the box as head pose (``family.headpose_context``); the
    answer is five points on the crop's 0–99 grid as number tokens, ``[[<x>,<y>,…]]``. Grounding
    alone teaches the tiny model where a head is, not how it is turned: a base that has also
    learnt to find the facial points of a face crop already carries the pose's geometry into its
    text model (docs/vlm_learning.md).

    Returns:
        The example, or ``None`` when the row has no 68 landmarks or the family does not ask
        head pose on a crop (only the tiny family is pre-trained here).
    """
    if family.headpose_context is None:
        return None
    image, box, sid = _frame(row)
    window = face_window(box, family.headpose_context, rng, jitter, zoom)
    values = _facepoint_values(row, window, family)
    if values is None:
        return None
    side = window[2] - window[0]
    moved = (box[0] - window[0], box[1] - window[1], box[2] - window[0], box[3] - window[1])
    return Example(
        task="facepoints",
        image=standardise_crop(face_crop(image, window)),
        prompt=FACEPOINTS_PROMPT.format(box=family.format_box(moved, side, side)),
        answer=points_text(values),
        target=tuple(float(v) for v in values),
        source_id=sid,
        head_box=moved,
    )


def _facepoint_values(row: Mapping[str, Any], window: tuple[int, int, int, int], family: VLMFamily) -> list[int] | None:
    """The five facial points of a row on the 0–99 grid of ``window`` (x, y, x, y, …), or
    ``None`` without 68 landmarks."""
    marks = row.get("landmarks")
    if marks is None or len(marks) != 136 or not row.get("source_width") or not row.get("source_height"):
        return None
    sx, sy = row["frame_width"] / row["source_width"], row["frame_height"] / row["source_height"]
    xy = np.asarray(marks, dtype=np.float64).reshape(68, 2) * (sx, sy)
    side = window[2] - window[0]
    points = [xy[list(group)].mean(axis=0) - window[:2] for group in FACEPOINT_GROUPS]
    return [family.box.grid.to_grid(float(v), side) for p in points for v in p]


def points_text(values: Sequence[int]) -> str:
    """``[[<x>,<y>,…]]``: grid values as number tokens."""
    return "[[" + ",".join(number_token(v) for v in values) + "]]"


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


def crop_example(example: Example, family: VLMFamily, window: tuple[int, int, int, int]) -> Example:
    """The same question about a crop of the image: the box is moved into the crop's pixels.

    The pose of a head does not change when the frame around it is cropped, so head-pose
    answers are kept and only the box in the prompt moves.

    Args:
        example: a grounding or head-pose example.
        family: its family (re-writes the box).
        window: integer ``(x0, y0, x1, y1)`` inside the image that contains the head box.

    Returns:
        A new example on ``image[y0:y1, x0:x1]``.

    Raises:
        ValueError: when the window leaves the image or does not contain the head box.
    """
    x0, y0, x1, y1 = window
    height, width = example.image.shape[:2]
    box = example.target if example.task == "grounding" else example.head_box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"crop window {window} is not inside the {width}×{height} image")
    if box[0] < x0 or box[1] < y0 or box[2] > x1 or box[3] > y1:
        raise ValueError(f"crop window {window} cuts the head box {box}")
    image = example.image[y0:y1, x0:x1]
    moved = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    if example.task == "grounding":
        return _grounding(image, moved, family, example.source_id)
    return _headpose(image, moved, example.target, family, example.source_id)


def random_window(
    box: Sequence[float], width: int, height: int, rng: np.random.Generator, min_scale: float = 0.6
) -> tuple[int, int, int, int]:
    """A random crop window of ``min_scale``–1 of each image side that keeps the whole ``box``."""
    bx0, by0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    bx1, by1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    scale = rng.uniform(min_scale, 1.0)
    cw, ch = max(bx1 - bx0, round(width * scale)), max(by1 - by0, round(height * scale))
    # The window's left edge may go from (box right edge − window width) to the box's left edge.
    x0 = int(rng.integers(max(0, bx1 - cw), min(bx0, width - cw) + 1))
    y0 = int(rng.integers(max(0, by1 - ch), min(by0, height - ch) + 1))
    return x0, y0, x0 + cw, y0 + ch


def random_crop(example: Example, family: VLMFamily, rng: np.random.Generator, min_scale: float = 0.6) -> Example:
    """Augmentation: a random crop of ``min_scale``–1 of each side that keeps the whole head box.

    Frames of a dataset tend to place the head alike (a constant box already scores well), so
    moving and rescaling the head makes the model read the image to answer.

    Args:
        example: a grounding or head-pose example.
        family: its family.
        rng: the caller's generator (seed it per row and epoch for reproducible runs).
        min_scale: smallest crop side as a fraction of the image side (never smaller than the box).

    Returns:
        The cropped example (``crop_example``).
    """
    height, width = example.image.shape[:2]
    box = example.target if example.task == "grounding" else example.head_box
    return crop_example(example, family, random_window(box, width, height, rng, min_scale))


def crop_row(row: Mapping[str, Any], window: tuple[int, int, int, int], jpeg_quality: int = 95) -> dict[str, Any]:
    """A head-pose row whose frame is cut to ``window`` (JPEG re-encoded, head box moved).

    Held-out grounding is scored on such crops: on whole frames, where heads sit alike, always
    answering the average box already scores well and would hide a model that ignores the image.
    """
    image, box, sid = _frame(row)
    x0, y0, x1, y1 = window
    out = dict(row)
    out.update(
        frame_jpeg=encode_jpeg(np.ascontiguousarray(image[y0:y1, x0:x1]), jpeg_quality),
        frame_width=x1 - x0,
        frame_height=y1 - y0,
        head_box=[box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0],
    )
    return out


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
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    # Other per-token inputs (Qwen2-VL's ``mm_token_type_ids``) follow the ids; answer tokens are
    # text, which every such input marks with 0.
    per_token = [k for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and v.shape == ids.shape]
    lengths = [int(m.sum()) + len(a) for m, a in zip(mask, answers, strict=True)]
    longest = max(lengths)
    if max_length is not None and longest > max_length:
        raise ValueError(f"a training sequence has {longest} tokens, more than max_length={max_length}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    batch = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_token)}
    batch["input_ids"] = ids.new_full((len(examples), longest), pad_id)
    batch["attention_mask"] = torch.zeros_like(batch["input_ids"])
    batch["labels"] = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for key in per_token:
        batch[key] = inputs[key].new_zeros((len(examples), longest))
    for i, answer in enumerate(answers):
        prompt = ids[i][mask[i]]
        n, total = len(prompt), lengths[i]
        answer = torch.tensor(answer, dtype=ids.dtype)
        batch["input_ids"][i, :n] = prompt
        batch["input_ids"][i, n:total] = answer
        batch["attention_mask"][i, :total] = 1
        batch["labels"][i, n:total] = answer
        for key in per_token:
            batch[key][i, :n] = inputs[key][i][mask[i]]
    return batch


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
    device = next(model.parameters()).device  # a GPU actor's model: its inputs follow it
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in dict(inputs).items()}
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
