"""The tiny VLM can learn to ground: a short plain-torch run on a toy task beats chance by far.

Toy task: a bright square (20–45 % of the side) at a random position on a dark, noisy 32×32 canvas;
the answer is its box in the tiny family's ``[[x0,y0,x1,y1]]`` 00–99 syntax. Recipe of DESIGN §6:
AdamW, lr 2e-3, 50 warm-up steps then cosine decay, loss on the answer tokens only (``collate``),
patch 8. The model is the tiny LLaVA at width 64 (0.27 M parameters, 16 image tokens) and the
prompt is a short constant: the cost of a step grows with the sequence, and neither changes what is
being tested (that image → answer can be learnt through this model, collate and generate).

Measured on the 2-core CPU, 500 steps at batch 16, 64 held-out canvases (seeds 0–3):

=====  =========  ===========  =====  ==========  ==================
seed   loss 0→    valid        acc@.5 mean IoU    mean-box baseline
=====  =========  ===========  =====  ==========  ==================
0      4.55→0.39  100 %        0.75   0.61        0.03
1      4.56→0.34  100 %        0.88   0.67        0.06
2      4.53→0.40  100 %        0.58   0.48        0.08
3      4.49→0.38  100 %        0.72   0.58        0.08
=====  =========  ===========  =====  ==========  ==================

≈ 14 s of training on an idle machine (0.03 s per step). Without the warm-up, seed 2 stayed on the
plateau (acc@.5 0.05 after 400 steps); 800 steps reached 0.80–0.98. The thresholds below leave
a wide margin under the worst seed.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from pipeline.vlm.boxes import iou
from pipeline.vlm.examples import Example, collate, generate_answers
from pipeline.vlm.families import get_family
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm

os.environ["HF_HUB_OFFLINE"] = "1"

SIDE, STEPS, WARMUP, BATCH, LR = 32, 500, 50, 16, 2e-3
CONFIG = TinyVLMConfig(
    image_size=SIDE, hidden_size=64, intermediate_size=256, vision_hidden_size=64, vision_intermediate_size=256
)


def _squares(rng: np.random.Generator, n: int) -> list[Example]:
    family = get_family("tiny")
    examples = []
    for _ in range(n):
        image = rng.integers(0, 40, (SIDE, SIDE, 3), dtype=np.uint8)
        side = int(rng.integers(int(SIDE * 0.2), int(SIDE * 0.45) + 1))
        x, y = (int(v) for v in rng.integers(0, SIDE - side + 1, 2))
        image[y : y + side, x : x + side] = rng.integers(200, 256, 3)
        box = (float(x), float(y), float(x + side), float(y + side))
        examples.append(Example("grounding", image, "head?", family.grounding_answer(box, SIDE, SIDE), box, "toy"))
    return examples


@pytest.mark.integration  # ~15 s of training on an idle machine, minutes under load
def test_tiny_vlm_learns_toy_grounding():
    family = get_family("tiny")
    model, processor = build_tiny_vlm(CONFIG)
    rng = np.random.default_rng(0)
    held_out = _squares(np.random.default_rng(1000), 64)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    decay = STEPS - WARMUP
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / WARMUP if s < WARMUP else 0.5 * (1 + math.cos(math.pi * min(s - WARMUP, decay) / decay)),
    )
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(**collate(_squares(rng, BATCH), family, processor)).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())

    answers = generate_answers(
        model, processor, family, [e.image for e in held_out], [e.prompt for e in held_out], max_new_tokens=20
    )
    boxes = [family.parse_grounding(a, SIDE, SIDE) for a in answers]
    ious = [iou(b, e.target) if b is not None else 0.0 for b, e in zip(boxes, held_out, strict=True)]
    valid = np.mean([b is not None for b in boxes])
    accuracy = np.mean([v >= 0.5 for v in ious])
    mean_box = tuple(np.mean([e.target for e in held_out], axis=0))
    baseline = np.mean([iou(mean_box, e.target) >= 0.5 for e in held_out])

    assert np.mean(losses[-20:]) < 0.15 * np.mean(losses[:5]), (losses[:5], losses[-20:])
    assert valid >= 0.95, answers[:8]
    assert accuracy >= 0.4 and accuracy > baseline + 0.3, (accuracy, baseline, answers[:8])
