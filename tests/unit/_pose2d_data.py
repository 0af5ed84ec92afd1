"""Shared data for the pose2d tests: tiny synthetic COCO / HumanArt, ingested, with their COCO
ground truth, and a tiny ViTPose size (128×96 input, so the ingested 192×256 crops are resized).

Built from the dataset writers and ``IngestConfig`` defaults rather than ``params.yaml``, so
these tests do not depend on the rest of the pipeline's knobs.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.config import IngestConfig
from pipeline.datasets import coco, humanart
from pipeline.evaluate.coco_gt import write_ground_truth
from pipeline.ingest import ingest, read_records

# Small enough for CPU unit tests; classic (deconv) head, as VLPose's twin decoder expects.
TINY_SIZE = {"image_height": 128, "image_width": 96, "hidden_size": 64, "num_layers": 2, "num_heads": 2}

_WRITERS = {
    "coco": lambda root: coco.write_synthetic(root, 4, 4, seed=3),
    "humanart": lambda root: humanart.write_synthetic(root, 1, 1, seed=3),
}
_GT_SOURCE = {"coco": coco.ground_truth_source, "humanart": humanart.ground_truth_source}
_CACHE: dict[str, tuple[Path, dict[str, Path]]] = {}


def ingested(name: str, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """``(Parquet folder, ground-truth files)`` of one tiny keypoint dataset, built once per session."""
    if name not in _CACHE:
        root = tmp_path_factory.mktemp(f"pose2d-{name}")
        _WRITERS[name](root / "raw")
        settings = IngestConfig().model_dump(exclude={"datasets"})
        ingest(name, root / "raw", root / "pq", seed=0, crop_margin=(0.2, 0.2), settings=settings, engine="local")
        annotation_json, images_rel, strip = _GT_SOURCE[name](root / "raw")
        files = write_ground_truth(annotation_json, images_rel, root / "gt", name, strip_prefix=strip)
        _CACHE[name] = (root / "pq", files)
    return _CACHE[name]


def table(name: str, split: str, tmp_path_factory) -> pa.Table:
    """One split of an ingested tiny keypoint dataset."""
    return read_records(ingested(name, tmp_path_factory)[0], split)


def four_crops(tmp_path_factory) -> list[dict]:
    """Four HumanArt training crops from four different scenes (a 4-row training batch)."""
    picked: dict[str, dict] = {}
    for r in table("humanart", "train", tmp_path_factory).to_pylist():
        picked.setdefault(r["scene"], r)
    return list(picked.values())[:4]
