"""``BaselineConfig``: the ``baseline`` section of ``params.yaml`` (6DRepNet-style CNN).

Example (the defaults)::

    baseline:
      name: 6drepnet          # a key of pipeline.baselines.BASELINES
      backbone: small_cnn     # a key of pipeline.baselines.backbone.BACKBONES, or "module:callable"
      backbone_kwargs: {}     # extra keyword arguments of the backbone factory
      width: 32               # channels of the first stage, doubled at each later stage
      depth: 1                # residual blocks per stage
      stages: 3               # stages; each after the first halves the resolution
      input_size: 64          # face crops are resized to input_size² before the network
      flip: true              # random horizontal flip (yaw and roll change sign)
      normalize: per_image    # per_image (blind to a test set's brightness) | imagenet (pretrained backbones)
      augment: {}             # AugmentConfig (pipeline/baselines/augment.py): rotation, zoom, colour, …
      init_seed: 0            # initial weights (independent of the training seed)
      eval_batch_size: 64
      train: {}               # TrainConfig fields (steps, micro_batch_size, lr, …) of the run
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.baselines.augment import AugmentConfig, Normalize


class BaselineConfig(BaseModel):
    """Typed config of a CNN head-pose baseline; unknown keys fail naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("6drepnet", description="baseline model (registry key)")
    backbone: str = Field("small_cnn", description="registered backbone or 'module:callable'")
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra backbone factory arguments")
    width: int = Field(32, ge=1, le=1024, description="channels of the first stage")
    depth: int = Field(1, ge=1, le=16, description="residual blocks per stage")
    stages: int = Field(3, ge=1, le=6, description="stages (resolution halves at each after the first)")
    input_size: int = Field(64, ge=16, le=1024, description="network input side in pixels")
    flip: bool = Field(True, description="random horizontal flip augmentation")
    normalize: Normalize = Field("per_image", description="input normalisation: per_image | imagenet")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="training augmentation")
    init_seed: int = Field(0, description="seed of the initial weights")
    eval_batch_size: int = Field(64, ge=1, description="images per inference batch")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields of the run")

    @field_validator("name")
    @classmethod
    def _known_baseline(cls, v: str) -> str:
        from pipeline.baselines.registry import BASELINES

        if v not in BASELINES:
            raise ValueError(f"unknown baseline {v!r}; valid: {', '.join(sorted(BASELINES))}")
        return v

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        # Only the spelling is checked here: importing a user's module waits for preflight.
        from pipeline.baselines.backbone import BACKBONES, is_import_path

        if v not in BACKBONES and not is_import_path(v):
            raise ValueError(
                f"unknown backbone {v!r}; valid: {', '.join(sorted(BACKBONES))} or an import path 'module:callable'"
            )
        return v

    @field_validator("train")
    @classmethod
    def _valid_train(cls, v: dict[str, Any]) -> dict[str, Any]:
        from pipeline.train.config import TrainConfig

        TrainConfig.model_validate(v)
        return v

    def model_fields_only(self) -> dict[str, Any]:
        """The fields saved beside the weights: all but ``train`` (``augment`` records how it was trained)."""
        return self.model_dump(mode="json", exclude={"train"})
