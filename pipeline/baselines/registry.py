"""The registry of CNN head-pose baselines: name → model class.

A baseline is an ``nn.Module`` built as ``cls(backbone, features)`` whose ``forward(images)``
returns raw head outputs and which knows, from those outputs,

* ``loss(out, batch) -> Tensor`` — its training loss; ``batch`` holds ``rotation``
  ``(B, 3, 3)`` and ``angles`` ``(B, 3)`` (yaw, pitch, roll in degrees);
* ``euler(out) -> Tensor`` — predicted ``(B, 3)`` yaw, pitch, roll in degrees.

Adding a baseline = one class with ``@register_baseline("name")`` + one import in
``pipeline/baselines/__init__.py`` + one test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.baselines.config import BaselineConfig


class HeadPoseBaseline(Protocol):
    """What every registered baseline module offers beyond ``forward``."""

    def loss(self, out: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def euler(self, out: torch.Tensor) -> torch.Tensor: ...


BASELINES: dict[str, type[nn.Module]] = {}
T = TypeVar("T", bound=type[nn.Module])


def register_baseline(name: str) -> Callable[[T], T]:
    """Class decorator: add a baseline to :data:`BASELINES` under ``name``."""

    def add(cls: T) -> T:
        if name in BASELINES:
            raise ValueError(f"baseline {name!r} is already registered")
        BASELINES[name] = cls
        return cls

    return add


def get_baseline(name: str) -> type[nn.Module]:
    """The baseline class registered as ``name``; a ``KeyError`` lists the valid names."""
    try:
        return BASELINES[name]
    except KeyError:
        raise KeyError(f"unknown baseline {name!r}; valid: {', '.join(sorted(BASELINES))}") from None


def build_baseline(cfg: BaselineConfig) -> nn.Module:
    """Backbone + the baseline's head, with freshly initialised weights (from the current torch RNG)."""
    from pipeline.baselines.backbone import build_backbone

    backbone, features = build_backbone(
        cfg.backbone,
        width=cfg.width,
        depth=cfg.depth,
        stages=cfg.stages,
        input_size=cfg.input_size,
        kwargs=cfg.backbone_kwargs,
    )
    return get_baseline(cfg.name)(backbone, features)
