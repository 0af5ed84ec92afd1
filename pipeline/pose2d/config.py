"""``PoseConfig``: the ``pose`` section of ``params.yaml`` (ViTPose, fine-tuned ViTPose, VLPose).

Example (the defaults; the three training stages take about six and a half minutes on a quiet
two-core box with the embedded synthetic COCO + HumanArt, docs/vlpose_learning.md)::

    pose:
      checkpoint: null          # a ViTPose folder (save_pretrained) to use as the original; null = train it
      size: {image_height: 128, image_width: 96, patch_size: 32}   # ViTPoseSize fields (classic deconv head)
      sigma: 1.5                # target Gaussian σ in heatmap cells
      flip_prob: 0.5            # left-right flip augmentation per training sample
      seed: 0                   # initial weights (ViTPose from scratch, VLPose's matcher)
      vlpose: {}                # VLPoseConfig fields but text_dim (num_heads, num_text_tokens, dropout)
      prompts: {}               # PromptConfig fields (template, styles)
      text_encoder_dir: null    # null = the bundled all-MiniLM-L6-v2
      finetune_backbone: true   # the fine-tuned ViTPose baseline trains every weight (false: head only)
      train_original: {...}     # TrainConfig fields of each training stage
      finetune: {...}
      train_vlpose: {...}
      eval_batch_size: 32
      detections: null          # {coco: results.json, humanart: …}: also evaluate with detected boxes
      detection_min_score: 0.0
      registry: {enabled: true, model_name: vlpose, coco_tolerance: 0.05}

Every dict section is validated against the class it feeds (``ViTPoseSize``, ``VLPoseConfig``,
``PromptConfig``, ``TrainConfig``), so a typo fails at load time naming the key, but stays a
plain dict in the config (it is passed on to the tasks as such).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

__all__ = ["DEFAULT_SIZE", "DOMAINS", "PoseConfig", "PoseRegistryConfig"]

# The evaluation domains: each has a Parquet folder and a ground-truth folder of that name.
DOMAINS = ("coco", "humanart")

# 128×96 input (half ViTPose's 256×192), patch 32 (a 4×3 token grid, 16×12 heatmaps), the
# classic deconv head: 2.8 M parameters. The head's fixed 256-channel deconvs cost ~75 % of a
# step and scale with the token grid, so patch 32 runs ~2× the crops per second of patch 16
# (8×6 grid) and a from-scratch model reaches the same error in about half the wall time
# (docs/vlpose_learning.md). The simple head is faster still but cannot place joints from a
# coarse grid and leaves VLPose's twin decoder without a trainable layer.
DEFAULT_SIZE: dict[str, Any] = {"image_height": 128, "image_width": 96, "patch_size": 32}


def _dataclass_fields(factory: Callable[[], type], exclude: tuple[str, ...] = ()) -> Any:
    """A dict section that must build ``factory()(**section)`` (a lazily imported dataclass)."""

    def check(v: dict[str, Any]) -> dict[str, Any]:
        cls = factory()
        valid = {f.name for f in dataclasses.fields(cls)} - set(exclude)
        if unknown := sorted(set(v) - valid):
            raise ValueError(f"unknown key(s) {unknown}; valid: {', '.join(sorted(valid))}")
        try:
            cls(**v)
        except TypeError as e:  # a wrong type inside the dataclass
            raise ValueError(str(e)) from None
        return v

    return Annotated[dict[str, Any], AfterValidator(check)]


def _train_config(v: dict[str, Any]) -> dict[str, Any]:
    from pipeline.train.config import TrainConfig

    TrainConfig.model_validate(v)
    return v


def _vitpose_size() -> type:
    from pipeline.pose2d.vitpose import ViTPoseSize

    return ViTPoseSize


def _vlpose_config() -> type:
    from pipeline.pose2d.model import VLPoseConfig

    return VLPoseConfig


def _prompt_config() -> type:
    from pipeline.pose2d.text import PromptConfig

    return PromptConfig


SizeSection = _dataclass_fields(_vitpose_size)
VLPoseSection = _dataclass_fields(_vlpose_config, exclude=("text_dim",))  # the text encoder's size
PromptSection = _dataclass_fields(_prompt_config)
TrainSection = Annotated[dict[str, Any], AfterValidator(_train_config)]


class PoseRegistryConfig(BaseModel):
    """MLflow registry of VLPose: every trained VLPose is a version with alias ``candidate``;
    ``champion`` moves to it only if its HumanArt AP beats the champion's and its COCO AP is
    within ``coco_tolerance`` (AP points as a fraction, 0.05 = 5 AP) of the original ViTPose's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    model_name: str = "vlpose"
    coco_tolerance: float = Field(0.05, ge=0.0, le=1.0)


def _train(steps: int, lr: float, warmup: int, checkpoint_every: int) -> dict[str, Any]:
    return {
        "steps": steps,
        "micro_batch_size": 16,
        "lr": lr,
        "warmup_steps": warmup,
        "min_lr_ratio": 0.05,
        "checkpoint_every": checkpoint_every,
    }


class PoseConfig(BaseModel):
    """Typed ``pose`` section; unknown keys fail naming the key (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: Path | None = Field(None, description="a user's ViTPose folder; null = train the original")
    size: SizeSection = Field(default_factory=lambda: dict(DEFAULT_SIZE), description="ViTPoseSize fields")
    sigma: float = Field(1.5, gt=0.0, description="target Gaussian σ in heatmap cells (1.5 at 16×12)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="left-right flip probability per sample")
    seed: int = Field(0, description="initial weights of ViTPose (from scratch) and of VLPose's extras")
    vlpose: VLPoseSection = Field(default_factory=dict, description="VLPoseConfig fields but text_dim")
    prompts: PromptSection = Field(default_factory=dict, description="PromptConfig fields")
    text_encoder_dir: Path | None = Field(None, description="local text encoder; null = bundled MiniLM")
    finetune_backbone: bool = Field(True, description="fine-tuned baseline: every weight (false: head only)")
    # From scratch the original is the one that needs steps; the two adaptations start from it.
    # Timings of the three on two loaded cores: docs/vlpose_learning.md.
    train_original: TrainSection = Field(default_factory=lambda: _train(900, 5e-3, 30, 300))
    finetune: TrainSection = Field(default_factory=lambda: _train(150, 2e-3, 10, 75))
    train_vlpose: TrainSection = Field(default_factory=lambda: _train(150, 5e-3, 10, 75))
    eval_batch_size: int = Field(32, ge=1, description="crops per inference batch")
    detections: dict[str, Path] | None = Field(
        None, description="domain → COCO-results detections JSON: also evaluate with detected boxes"
    )
    detection_min_score: float = Field(0.0, ge=0.0, le=1.0, description="detections below this are dropped")
    registry: PoseRegistryConfig = Field(default_factory=PoseRegistryConfig)

    @field_validator("detections")
    @classmethod
    def _known_domains(cls, v: dict[str, Path] | None) -> dict[str, Path] | None:
        if v is not None and (unknown := sorted(set(v) - set(DOMAINS))):
            raise ValueError(f"unknown domain(s) {unknown}; valid: {', '.join(DOMAINS)}")
        return v

    def train_config(self, stage: str) -> Any:
        """The validated :class:`~pipeline.train.config.TrainConfig` of a training stage.

        Args:
            stage: ``train_original``, ``finetune`` or ``train_vlpose``.
        """
        from pipeline.train.config import TrainConfig

        sections = {"train_original": self.train_original, "finetune": self.finetune, "train_vlpose": self.train_vlpose}
        if stage not in sections:
            raise KeyError(f"unknown pose training stage {stage!r}; valid: {', '.join(sections)}")
        return TrainConfig.model_validate(sections[stage])
