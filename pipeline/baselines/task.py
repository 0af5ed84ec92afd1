"""The CNN baselines' plug-in for the one training loop, and their saved form.

:class:`BaselineTask` implements :class:`pipeline.train.ray_deepspeed.Task`: rows of an
ingested head-pose table (``face_jpeg`` + canonical yaw/pitch/roll) become normalised image
tensors and target rotations; the loss is the registered model's own (geodesic for 6DRepNet).

A trained model is a folder::

    model.safetensors   the module's state dict (weights and BN statistics)
    config.json         the network fields of BaselineConfig + format version

and :func:`load_baseline` rebuilds it from those two files only (no pickle).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.baselines.augment import AugmentConfig, Normalize, blur, geometric, normalise, photometric
from pipeline.baselines.config import BaselineConfig
from pipeline.baselines.registry import build_baseline
from pipeline.geometry import flip_euler, rotation_matrix

REQUIRED_COLUMNS = ("source_id", "face_jpeg", "yaw", "pitch", "roll")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = 1

Pose = tuple[float, float, float]


def _decode(data: bytes, size: int, flip: bool) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    out = np.stack([np.asarray(img) for img in images])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


def load_faces(
    jpegs: Sequence[bytes], size: int, flips: Sequence[bool] | None = None, normalize: Normalize = "per_image"
) -> torch.Tensor:
    """Decode face crops into a normalised float batch ``(B, 3, size, size)`` (inference).

    Args:
        jpegs: encoded face crops (any PIL-readable format).
        size: output side; crops of another size are resized (bilinear).
        flips: per image, mirror it horizontally (the caller flips the labels to match).
        normalize: the model's input normalisation (``BaselineConfig.normalize``).
    """
    flips = flips if flips is not None else [False] * len(jpegs)
    images = [_decode(data, size, f) for data, f in zip(jpegs, flips, strict=True)]
    return normalise(_to_tensor(images), normalize)


def augmented_faces(
    jpegs: Sequence[bytes], flips: Sequence[bool], poses: Sequence[Pose], size: int, normalize: Normalize,
    cfg: AugmentConfig, rng: np.random.Generator,
) -> tuple[torch.Tensor, list[Pose]]:  # fmt: skip
    """Training batch: decoded (and mirrored where ``flips`` says) crops through
    :mod:`pipeline.baselines.augment`, with the poses the geometric part implies.

    ``poses`` are the labels of the mirrored pictures (the caller flips them to match).
    """
    images, out_poses = [], []
    for data, flip, pose in zip(jpegs, flips, poses, strict=True):
        img, pose = geometric(_decode(data, size, flip), pose, rng, cfg)
        images.append(blur(img, rng, cfg))
        out_poses.append(pose)
    return normalise(photometric(_to_tensor(images), rng, cfg), normalize), out_poses


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DeepSpeed engine (or the module itself)."""
    return getattr(model, "module", model)


@dataclass
class BaselineTask:
    """Training task of a CNN head-pose baseline (see module docstring).

    Attributes:
        config: the baseline's config (network fields; ``train`` is not read here).
        torch_threads: intra-op threads of each worker; ``None`` leaves torch's default. One
            thread per worker avoids oversubscribing a small machine's cores.
    """

    config: BaselineConfig
    torch_threads: int | None = None
    required_columns: tuple[str, ...] = REQUIRED_COLUMNS
    # source_id is unique within a dataset; the angles break ties across datasets. (The default
    # would sort by every column, JPEG bytes included.)
    sort_keys: tuple[str, ...] = ("source_id", "yaw", "pitch", "roll")

    def preflight(self) -> None:
        """Build the network once: a bad backbone import path or output shape fails before Ray starts."""
        self.build_model()

    def build_model(self) -> nn.Module:
        """The baseline with weights from ``config.init_seed`` (the same in every worker and on resume)."""
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.init_seed)
            model = build_baseline(self.config)
        return model.train()

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Images, target rotations and angles; mirrored at random (torch RNG) when ``config.flip``,
        then augmented (``config.augment``) from a generator seeded by torch's RNG."""
        n = len(rows)
        flips = (torch.rand(n) < 0.5).tolist() if self.config.flip else [False] * n
        angles = [
            flip_euler(r["yaw"], r["pitch"], r["roll"]) if f else (r["yaw"], r["pitch"], r["roll"])
            for r, f in zip(rows, flips, strict=True)
        ]
        cfg, size = self.config, self.config.input_size
        if cfg.augment.enabled:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,))))
            jpegs = [r["face_jpeg"] for r in rows]
            images, angles = augmented_faces(jpegs, flips, angles, size, cfg.normalize, cfg.augment, rng)
        else:
            images = load_faces([r["face_jpeg"] for r in rows], size, flips, cfg.normalize)
        return {
            "image": images,
            "rotation": torch.from_numpy(np.stack([rotation_matrix(*a) for a in angles])).float(),
            "angles": torch.tensor(angles, dtype=torch.float32),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return unwrap(model).loss(model(batch["image"]), batch)

    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Training-batch MAE (degrees, mean of yaw/pitch/roll) next to the loss in MLflow."""
        pred = unwrap(model).euler(model(batch["image"]))
        err = ((pred - batch["angles"].float() + 180.0) % 360.0 - 180.0).abs()
        return {"train_mae": float(err.mean())}

    def save(self, model: nn.Module, out_dir: Path) -> None:
        save_baseline(unwrap(model), self.config, out_dir)


def save_baseline(model: nn.Module, cfg: BaselineConfig, out_dir: str | Path) -> None:
    """Write ``model.safetensors`` (state dict on CPU) and ``config.json`` into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": str(FORMAT), "baseline": cfg.name})
    (out_dir / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **cfg.model_fields_only()}, indent=2) + "\n")


def load_baseline(folder: str | Path) -> tuple[nn.Module, BaselineConfig]:
    """Rebuild a saved baseline in eval mode from its safetensors weights and JSON config.

    Raises:
        FileNotFoundError: ``folder`` lacks ``model.safetensors`` or ``config.json``.
        ValueError: unknown format, or weights that do not fit the configured network.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a baseline model folder (no {name})")
    raw = json.loads((folder / CONFIG_FILE).read_text())
    if raw.pop("format", None) != FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE}: format is not {FORMAT}")
    cfg = BaselineConfig.model_validate(raw)
    model = build_baseline(cfg)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit the network of {CONFIG_FILE}: {e}") from e
    return model.eval(), cfg
