"""How much head pose can the tiny VLM's vision side learn at all? A plain-PyTorch stand-in.

Not a benchmark of speed: a learning probe that isolates the vision tower from the decoder,
the number format and LoRA. A freshly initialised tower of the default ``vlm.tiny`` size (with
``--stem``: the conv stem of ``pipeline/convstem.py``) reads the VLM's own head-pose crops
(``examples.headpose_example``, training jitter 0.1; ``--source face``: the CNN baseline's
stored ``face_jpeg`` instead), its patch tokens are mean-pooled into a linear 6D head, and it
trains with the baseline's geodesic loss. It prints MAE / chance (training median) on held-out
300W-LP, AFLW2000 and BIWI. If this cannot get below a bound, no adapter on that tower will.

    .venv/bin/python bench/probe_vlm_vision.py --root data/parquet [--stem 32] [--aug] [--steps 2000]

``--root`` holds ingested ``300w_lp``, ``aflw2000`` and ``biwi_hpdb`` folders (after
``make demo``, or ``hpe ingest … --params P`` with another ``ingest.frame_size``). Results:
docs/vlm_learning.md, runs K and L.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.baselines.augment import AugmentConfig
from pipeline.baselines.backbone import SmallCNN
from pipeline.baselines.rotation import euler_to_matrix, geodesic_loss, matrix_to_euler, sixd_to_matrix
from pipeline.evaluate.yardsticks import split_heldout, true_poses
from pipeline.imaging import decode_jpeg
from pipeline.ingest import read_records
from pipeline.vlm.examples import headpose_example, standardise_crop
from pipeline.vlm.families import get_family
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm

TEST_SETS = {"held-out": None, "aflw2000": "aflw2000", "biwi": "biwi_hpdb"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="folder with ingested 300w_lp, aflw2000, biwi_hpdb")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--stem", type=int, default=0, help="conv stem width (0: CLIP's patchify)")
    ap.add_argument("--stem-depth", type=int, default=0, help="residual blocks per conv-stem stage")
    ap.add_argument("--no-positions", action="store_true", help="CLIP tower without position embeddings")
    ap.add_argument("--aug", action="store_true", help="the baseline's augmentation (examples.augment_face)")
    ap.add_argument("--source", choices=("vlm", "face"), default="vlm", help="VLM crop or stored face_jpeg")
    ap.add_argument(
        "--tower",
        choices=("clip", "cnn", "stem"),
        default="clip",
        help="the tiny CLIP tower, the baseline's CNN, or the conv stem alone",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    family = get_family("tiny")
    augment = AugmentConfig() if args.aug else None
    model, processor = build_tiny_vlm(TinyVLMConfig(conv_stem=args.stem, conv_stem_depth=args.stem_depth))
    if args.tower == "cnn":  # the baseline's default network on the same 64 px inputs
        cnn = SmallCNN(width=32, depth=1, stages=4)
        tower, head = cnn, torch.nn.Linear(cnn.out_features, 6)
    elif args.tower == "stem":  # the conv stem alone, globally pooled: no attention, no positions
        tower = model.model.vision_tower.embeddings.patch_embedding
        head = torch.nn.Linear(tower.proj.out_channels, 6)
    else:
        tower = model.model.vision_tower
        head = torch.nn.Linear(tower.config.hidden_size, 6)
        if args.no_positions:
            tower.embeddings.position_embedding.weight.data.zero_()
            tower.embeddings.position_embedding.weight.requires_grad_(False)

    train, heldout = split_heldout(read_records(f"{args.root}/300w_lp"), 0, 0.1)
    sets = {
        name: heldout if folder is None else read_records(f"{args.root}/{folder}") for name, folder in TEST_SETS.items()
    }
    chance = np.median(true_poses(train), axis=0)

    def inputs(rows: list[dict], rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        if args.source == "face":
            images = [standardise_crop(decode_jpeg(r["face_jpeg"])) for r in rows]
            poses = [(r["yaw"], r["pitch"], r["roll"]) for r in rows]
        else:
            jitter = 0.1 if rng is not None else 0.0
            examples = [
                headpose_example(r, family, rng, jitter, 1.0, augment if rng is not None else None) for r in rows
            ]
            images, poses = [e.image for e in examples], [e.target for e in examples]
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor(poses, dtype=torch.float32)

    def rotation(pixels: torch.Tensor) -> torch.Tensor:
        if args.tower == "cnn":
            return sixd_to_matrix(head(tower(pixels)))
        if args.tower == "stem":
            return sixd_to_matrix(head(tower(pixels).mean(dim=(-2, -1))))
        tokens = tower(pixel_values=pixels).last_hidden_state[:, 1:]  # patch tokens, no CLS
        return sixd_to_matrix(head(tokens.mean(1)))

    params = [p for p in (*tower.parameters(), *head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.05)
    rows, rng, start = train.to_pylist(), np.random.default_rng(0), time.perf_counter()
    for step in range(args.steps):
        pixels, poses = inputs([rows[i] for i in rng.integers(0, len(rows), args.batch)], rng)
        loss = geodesic_loss(rotation(pixels), euler_to_matrix(poses))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - start

    tower.eval()
    scores = []
    with torch.no_grad():
        for name, table in sets.items():
            test_rows = table.to_pylist()
            pred = np.concatenate(
                [
                    matrix_to_euler(rotation(inputs(test_rows[i : i + 64], None)[0])).numpy()
                    for i in range(0, len(test_rows), 64)
                ]
            )
            truth = true_poses(table)
            mae, chance_mae = np.abs(pred - truth).mean(), np.abs(chance - truth).mean()
            scores.append(f"{name} {mae:.2f}° / chance {chance_mae:.2f}° = {mae / chance_mae:.2f}×")
    setup = f"tower={args.tower} positions={not args.no_positions} source={args.source} batch={args.batch} stem={args.stem}x{args.stem_depth} aug={args.aug} steps={args.steps} ({seconds:.0f} s)"
    print(setup, " | ".join(scores), flush=True)


if __name__ == "__main__":
    main()
