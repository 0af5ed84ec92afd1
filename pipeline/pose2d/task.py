"""ViTPose and VLPose as tasks of the one training loop (:mod:`pipeline.train.ray_deepspeed`).

* :class:`ViTPoseTask` — the original ViTPose: built from a :class:`~pipeline.pose2d.vitpose.ViTPoseSize`
  and trained from scratch (the embedded default, on COCO), or loaded from a folder and trained
  further: the *fine-tuned ViTPose* baseline of the paper (every weight, or the head alone).
* :class:`VLPoseTask` — loads the original ViTPose from a folder, freezes it, and trains the
  relation matcher and twin decoder (:class:`~pipeline.pose2d.model.VLPoseModel`) on COCO +
  HumanArt. The domain prompts' embeddings are computed once per worker (~21 prompts, one
  encoder pass) and looked up per batch.

Both are small picklable dataclasses (they travel to every Ray worker); models, encoders and
embedding tables are built in the worker. Rows are Parquet keypoint records
(:mod:`pipeline.records.keypoints`); the loss is the masked heatmap MSE.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.pose2d.artifacts import save_vitpose, save_vlpose
from pipeline.pose2d.heatmaps import decode_heatmaps, masked_mse
from pipeline.pose2d.inputs import pose_batch
from pipeline.pose2d.model import VLPoseConfig, VLPoseModel, heatmaps_of
from pipeline.pose2d.text import PromptConfig, TextEncoder, lookup
from pipeline.pose2d.vitpose import (
    ViTPoseSize,
    build_vitpose,
    heatmap_size,
    input_size,
    load_vitpose,
    load_vitpose_config,
    vitpose_config,
)

__all__ = ["POSE_COLUMNS", "VLPOSE_COLUMNS", "SORT_KEYS", "ViTPoseTask", "VLPoseTask"]

POSE_COLUMNS = ("dataset", "source_id", "annotation_id", "crop_jpeg", "keypoints_crop")
VLPOSE_COLUMNS = (*POSE_COLUMNS, "scene", "super_category")
# A person is (dataset, image, annotation): a stable order without sorting on the JPEG bytes.
SORT_KEYS = ("dataset", "source_id", "annotation_id")


def _flips(n: int, prob: float) -> list[bool] | None:
    """Per-row flip decisions from torch's RNG (the loop reseeds it every step: reproducible)."""
    if prob <= 0.0:
        return None
    return (torch.rand(n) < prob).tolist()


def _keypoint_error(heatmaps: torch.Tensor, batch: dict[str, torch.Tensor], size: tuple[int, int]) -> float:
    """Mean input-pixel distance of decoded joints to the labels, over weighted joints."""
    xy, _ = decode_heatmaps(heatmaps, size)
    dist = (xy - batch["keypoints"].float()).norm(dim=-1)
    w = batch["target_weights"].float()
    return float((dist * w).sum() / w.sum().clamp_min(1.0))


@dataclass
class ViTPoseTask:
    """The original ViTPose (from scratch) or the fine-tuned ViTPose baseline (from a folder).

    Attributes:
        model_dir: a ViTPose folder to train further; ``None`` builds one from ``size``.
        size: :class:`~pipeline.pose2d.vitpose.ViTPoseSize` fields (``model_dir=None`` only).
        train_backbone: ``False`` freezes the backbone (head-only fine-tuning).
        sigma: target Gaussian σ in heatmap cells (2 at 64×48, as ViTPose).
        flip_prob: probability of a left–right flip per training sample.
        seed: initial weights when building from ``size``.
    """

    model_dir: str | None = None
    size: dict | None = None
    train_backbone: bool = True
    sigma: float = 2.0
    flip_prob: float = 0.0
    seed: int = 0
    required_columns: tuple[str, ...] = POSE_COLUMNS
    sort_keys: tuple[str, ...] = SORT_KEYS

    def _config(self) -> Any:
        if self.model_dir is not None:
            return load_vitpose_config(self.model_dir)
        return vitpose_config(ViTPoseSize(**(self.size or {})))

    @cached_property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(input (h, w), heatmap (H, W))`` of the model, from its config alone."""
        cfg = self._config()
        return input_size(cfg), heatmap_size(cfg)

    def preflight(self) -> None:
        """Fail in seconds: a model folder without config, sizes that do not fit."""
        from pipeline.train.ray_deepspeed import PreflightError

        try:
            self._config()
        except (FileNotFoundError, ValueError, TypeError) as e:
            raise PreflightError(f"ViTPose task: {e}") from e

    def build_model(self) -> nn.Module:
        """The ViTPose in train mode, every weight trainable (the backbone frozen if asked)."""
        if self.model_dir is not None:
            model = load_vitpose(self.model_dir)
        else:
            model = build_vitpose(ViTPoseSize(**(self.size or {})), seed=self.seed)
        model.train()
        model.requires_grad_(True)
        if not self.train_backbone:
            model.backbone.requires_grad_(False)
        return model

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        size, hm = self.geometry
        return pose_batch(rows, size, hm, self.sigma, _flips(len(rows), self.flip_prob))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = heatmaps_of(model, batch["pixel_values"])
        return masked_mse(pred, batch["target_heatmaps"], batch["target_weights"])

    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The batch's mean keypoint error in input pixels (a readable companion to the loss)."""
        return {
            "keypoint_error_px": _keypoint_error(heatmaps_of(model, batch["pixel_values"]), batch, self.geometry[0])
        }

    def save(self, model: nn.Module, out_dir: Path) -> None:
        module = getattr(model, "module", model)  # a DeepSpeed engine wraps the module
        save_vitpose(module, out_dir, info={"task": "vitpose", **_public(self)})


@dataclass
class VLPoseTask:
    """VLPose on a frozen original ViTPose: trains the relation matcher, twin decoder and injectors.

    Attributes:
        base_dir: the original ViTPose folder (e.g. the output of a :class:`ViTPoseTask` run).
        vlpose: :class:`~pipeline.pose2d.model.VLPoseConfig` fields but ``text_dim`` (the encoder's).
        prompts: :class:`~pipeline.pose2d.text.PromptConfig` fields (template, styles).
        text_encoder_dir: a local text-encoder folder; ``None`` = bundled all-MiniLM-L6-v2.
        sigma: target Gaussian σ in heatmap cells.
        flip_prob: probability of a left–right flip per training sample.
        seed: initial weights of the matcher.
    """

    base_dir: str
    vlpose: dict | None = None
    prompts: dict | None = None
    text_encoder_dir: str | None = None
    sigma: float = 2.0
    flip_prob: float = 0.0
    seed: int = 0
    required_columns: tuple[str, ...] = VLPOSE_COLUMNS
    sort_keys: tuple[str, ...] = SORT_KEYS
    _encoder: TextEncoder | None = field(default=None, repr=False, compare=False)

    # The text encoder (and its cache) is rebuilt in each worker rather than pickled.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_encoder"] = None
        return state

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig(**(self.prompts or {}))

    @property
    def encoder(self) -> TextEncoder:
        """The frozen text encoder, loaded once, with the known prompts (COCO + HumanArt scenes) cached."""
        if self._encoder is None:
            encoder = TextEncoder(self.text_encoder_dir)
            encoder.encode(self.prompt_config.known_prompts())  # one pass for all ~21 prompts
            self._encoder = encoder
        return self._encoder

    def prompt_table(self) -> dict[str, torch.Tensor]:
        """Every prompt embedded so far (the known ones at least): saved with the model."""
        return self.encoder.cached

    @cached_property
    def geometry(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(input (h, w), heatmap (H, W))`` of the original."""
        cfg = load_vitpose_config(self.base_dir)
        return input_size(cfg), heatmap_size(cfg)

    def preflight(self) -> None:
        """Fail in seconds: base model folder, VLPose extras, prompt template, text encoder."""
        from pipeline.train.ray_deepspeed import PreflightError

        try:
            load_vitpose_config(self.base_dir)
            if "text_dim" in (self.vlpose or {}):
                raise ValueError("vlpose.text_dim is the text encoder's size; do not set it")
            VLPoseConfig(**(self.vlpose or {}))
            self.prompt_config.known_prompts()
            _ = self.encoder.dim
        except (FileNotFoundError, OSError, ValueError, TypeError) as e:
            raise PreflightError(f"VLPose task: {e}") from e

    def build_model(self) -> nn.Module:
        """Original (frozen, eval) + matcher/twin/injectors (trainable); same weights every call."""
        original = load_vitpose(self.base_dir)
        config = VLPoseConfig(**{**(self.vlpose or {}), "text_dim": self.encoder.dim})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = VLPoseModel(original, config)
        return model.train()

    def text_embeds(self, rows: list[dict]) -> torch.Tensor:
        """``(B, text_dim)`` prompt embeddings of the rows, from the cached table."""
        pc = self.prompt_config
        prompts = [pc.prompt(r["scene"], r.get("super_category")) for r in rows]
        return lookup(self.encoder.cached, prompts, self.encoder)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        size, hm = self.geometry
        batch = pose_batch(rows, size, hm, self.sigma, _flips(len(rows), self.flip_prob))
        batch["text_embeds"] = self.text_embeds(rows)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pred = heatmaps_of(model, batch["pixel_values"], batch["text_embeds"])
        return masked_mse(pred, batch["target_heatmaps"], batch["target_weights"])

    def metrics(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Keypoint error of VLPose and of the original on the same batch: what the twin adds."""
        size = self.geometry[0]
        module = getattr(model, "module", model)
        ours = module(batch["pixel_values"], batch["text_embeds"])
        original = module(batch["pixel_values"], inject=False)
        return {
            "keypoint_error_px": _keypoint_error(ours, batch, size),
            "original_keypoint_error_px": _keypoint_error(original, batch, size),
        }

    def save(self, model: nn.Module, out_dir: Path) -> None:
        module = getattr(model, "module", model)
        save_vlpose(
            module,
            out_dir,
            prompts=self.prompt_config,
            prompt_table=self.prompt_table(),
            text_encoder_dir=self.text_encoder_dir,
            info={"task": "vlpose", **_public(self)},
        )


def _public(task: Any) -> dict[str, Any]:
    """The task's settings for the model's metadata (private fields, e.g. the encoder, dropped)."""
    return {f.name: getattr(task, f.name) for f in fields(task) if not f.name.startswith("_")}
