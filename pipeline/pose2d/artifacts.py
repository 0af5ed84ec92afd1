"""Pose model folders: write ViTPose / VLPose, load either back as a :class:`PoseEstimator`.

Layouts (weights in safetensors only)::

    <vitpose>/  config.json  model.safetensors      (save_pretrained: any ViTPose folder works)
                pose_model.json                      {"format": 1, "kind": "vitpose", …}

    <vlpose>/   original/                            the frozen original ViTPose, save_pretrained:
                                                     load it alone to revert to the original model
                vlpose.safetensors                   matcher, twin decoder, injectors
                prompt_embeddings.safetensors        {"embeddings": (P, text_dim)}, rows = prompt_list
                pose_model.json                      {"format": 1, "kind": "vlpose", "vlpose": {…},
                                                      "prompts": {…}, "prompt_list": […],
                                                      "text_encoder_dir": null | "<path>"}

A folder without ``pose_model.json`` is read as a plain ViTPose (a user's converted checkpoint).
The prompt embeddings travel with the model, so predicting on COCO/HumanArt scenes needs no
text encoder; an unseen prompt is embedded with ``text_encoder_dir`` (``null`` = the bundled
all-MiniLM-L6-v2).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import VitPoseForPoseEstimation

from pipeline.pose2d.model import VLPoseConfig, VLPoseModel, heatmaps_of
from pipeline.pose2d.text import PromptConfig, TextEncoder, lookup
from pipeline.pose2d.vitpose import heatmap_size, input_size, load_vitpose

__all__ = ["META_FILE", "PoseEstimator", "save_vitpose", "save_vlpose", "load_pose_model"]

FORMAT = 1
META_FILE = "pose_model.json"
ORIGINAL_DIR = "original"
EXTRAS_FILE = "vlpose.safetensors"
PROMPTS_FILE = "prompt_embeddings.safetensors"


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, sort_keys=True))


def save_vitpose(model: VitPoseForPoseEstimation, folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` + ``pose_model.json`` (``info``: free-form run metadata, JSON-able)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    _write_meta(folder, {"kind": "vitpose", "info": info or {}})
    return folder


def save_vlpose(
    model: VLPoseModel,
    folder: str | Path,
    *,
    prompts: PromptConfig,
    prompt_table: dict[str, torch.Tensor],
    text_encoder_dir: str | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a VLPose folder (layout in the module docstring).

    Args:
        model: the trained VLPose.
        folder: destination (created).
        prompts: how scenes became prompts in training (prediction must ask the same way).
        prompt_table: prompt → embedding, saved so prediction needs no text encoder.
        text_encoder_dir: the encoder's folder, ``None`` for the bundled one.
        info: free-form run metadata.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.original.save_pretrained(str(folder / ORIGINAL_DIR))
    extras = {k: v.detach().cpu().contiguous().clone() for k, v in model.trainable_state_dict().items()}
    save_file(extras, str(folder / EXTRAS_FILE))
    names = sorted(prompt_table)
    table = torch.stack([prompt_table[p].detach().float().cpu() for p in names]) if names else torch.zeros(0, 0)
    save_file({"embeddings": table.contiguous()}, str(folder / PROMPTS_FILE))
    _write_meta(
        folder,
        {
            "kind": "vlpose",
            "vlpose": asdict(model.vlpose_config),
            "prompts": asdict(prompts),
            "prompt_list": names,
            "text_encoder_dir": text_encoder_dir,
            "info": info or {},
        },
    )
    return folder


@dataclass
class PoseEstimator:
    """A loaded pose model with what prediction needs to feed it.

    Attributes:
        model: ``VitPoseForPoseEstimation`` or :class:`~pipeline.pose2d.model.VLPoseModel` (eval mode).
        kind: ``vitpose`` or ``vlpose``.
        prompts: VLPose only: the scene → prompt rule used in training.
        prompt_table: VLPose only: prompt → embedding.
        text_encoder_dir: VLPose only: the encoder for prompts not in the table (``None``: bundled).
        info: the run metadata saved with the model.
    """

    model: nn.Module
    kind: str
    prompts: PromptConfig | None = None
    prompt_table: dict[str, torch.Tensor] = field(default_factory=dict)
    text_encoder_dir: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _encoder: TextEncoder | None = field(default=None, repr=False)

    @property
    def vitpose(self) -> VitPoseForPoseEstimation:
        """The (original) ViTPose inside."""
        return self.model.original if isinstance(self.model, VLPoseModel) else self.model

    @property
    def input_size(self) -> tuple[int, int]:
        """Model input ``(h, w)``."""
        return input_size(self.vitpose)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """Heatmap ``(H, W)``."""
        return heatmap_size(self.vitpose)

    def text_embeds(self, scenes: Sequence[str], super_categories: Sequence[str | None]) -> torch.Tensor | None:
        """``(B, text_dim)`` prompt embeddings of the records (``None`` for ViTPose)."""
        if self.kind != "vlpose" or self.prompts is None:
            return None
        prompts = [self.prompts.prompt(s, d) for s, d in zip(scenes, super_categories, strict=True)]
        if any(p not in self.prompt_table for p in prompts) and self._encoder is None:
            self._encoder = TextEncoder(self.text_encoder_dir)
        return lookup(self.prompt_table, prompts, self._encoder)

    @torch.no_grad()
    def heatmaps(
        self,
        pixel_values: torch.Tensor,
        scenes: Sequence[str] | None = None,
        super_categories: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """Heatmaps of a normalised batch; VLPose needs each record's scene (and super-category)."""
        text = None
        if self.kind == "vlpose":
            if scenes is None:
                raise ValueError("VLPose needs the scene of every image to build its prompt")
            text = self.text_embeds(scenes, super_categories or [None] * len(scenes))
        param = next(self.model.parameters())
        pixel_values = pixel_values.to(param.device, param.dtype)
        if text is not None:
            text = text.to(param.device, param.dtype)
        return heatmaps_of(self.model, pixel_values, text)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        return {"format": FORMAT, "kind": "vitpose", "info": {}}
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def _load_vlpose(folder: Path, meta: dict[str, Any]) -> PoseEstimator:
    original = load_vitpose(folder / ORIGINAL_DIR)
    model = VLPoseModel(original, VLPoseConfig(**meta["vlpose"]))
    extras = load_file(str(folder / EXTRAS_FILE))
    result = model.load_state_dict(extras, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("original.")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{folder / EXTRAS_FILE} does not fit the VLPose model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    table = load_file(str(folder / PROMPTS_FILE))["embeddings"]
    names = meta["prompt_list"]
    if len(names) != table.shape[0]:
        raise ValueError(f"{folder / PROMPTS_FILE}: {table.shape[0]} embeddings for {len(names)} prompts")
    return PoseEstimator(
        model=model.eval(),
        kind="vlpose",
        prompts=PromptConfig(**meta["prompts"]),
        prompt_table=dict(zip(names, table, strict=True)),
        text_encoder_dir=meta.get("text_encoder_dir"),
        info=meta.get("info", {}),
    )


def load_pose_model(folder: str | Path) -> PoseEstimator:
    """Load a folder written by :func:`save_vitpose` / :func:`save_vlpose`, or any ViTPose folder.

    Raises:
        FileNotFoundError: not a model folder.
        ValueError: an unknown format or kind, or weights that do not fit the config.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    kind = meta.get("kind")
    if kind == "vitpose":
        return PoseEstimator(model=load_vitpose(folder).eval(), kind="vitpose", info=meta.get("info", {}))
    if kind == "vlpose":
        return _load_vlpose(folder, meta)
    raise ValueError(f"{folder / META_FILE}: unknown kind {kind!r}; valid: vitpose, vlpose")
