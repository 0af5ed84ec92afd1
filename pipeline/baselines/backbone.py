"""Feature extractors for the CNN baselines: a small residual CNN, and user-supplied backbones.

A backbone is any ``nn.Module`` mapping images ``(B, 3, H, W)`` to features ``(B, F)`` or
feature maps ``(B, F, h, w)`` (global-average pooled here). Two ways to bring one:

* register a factory in :data:`BACKBONES` with :func:`register_backbone` (code in this repo);
  it is called as ``factory(width=, depth=, stages=, **backbone_kwargs)``;
* name it in params as an import path ``"package.module:callable"`` (code outside the repo,
  e.g. a timm or torchvision model on a GPU cluster); it is called as
  ``callable(**backbone_kwargs)``.

The feature width ``F`` is found by one probe forward pass, so a backbone needs no
``out_features`` attribute.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: add a backbone factory to :data:`BACKBONES` under ``name``."""

    def add(factory: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = factory
        return factory

    return add


class ResidualBlock(nn.Module):
    """Two 3×3 conv-BN layers with a shortcut (He et al. 2016, https://arxiv.org/abs/1512.03385).

    The second BN starts with γ = 0, so every block starts as the identity and a deeper
    network trains as easily as a shallow one (Goyal et al., https://arxiv.org/abs/1706.02677).
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallCNN(nn.Module):
    """A ResNet-like CNN small enough to train on a CPU: stem, ``stages`` stages, global pool.

    The stem halves the resolution; stage ``i`` has ``width·2^i`` channels, ``depth`` residual
    blocks, and halves the resolution again from the second stage on. Output: ``(B, width·2^(stages−1))``.
    """

    def __init__(self, width: int = 32, depth: int = 1, stages: int = 3):
        super().__init__()
        if width < 1 or depth < 1 or stages < 1:
            raise ValueError(f"width, depth and stages must be ≥ 1 (got {width}, {depth}, {stages})")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = width
        for i in range(stages):
            cout = width * 2**i
            for j in range(depth):
                blocks.append(ResidualBlock(cin, cout, stride=2 if i > 0 and j == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(-2, -1))


@register_backbone("small_cnn")
def small_cnn(width: int = 32, depth: int = 1, stages: int = 3) -> nn.Module:
    """The default backbone: :class:`SmallCNN` (≈ 0.3 M parameters at the defaults)."""
    return SmallCNN(width=width, depth=depth, stages=stages)


class GlobalPool(nn.Module):
    """Average feature maps ``(B, F, h, w)`` to ``(B, F)``, for backbones that return maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as ``package.module:callable``."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr and all(p.isidentifier() for p in module.split(".") + attr.split(".")))


def resolve_backbone(name: str) -> BackboneFactory:
    """The factory of a registered backbone or of an import path.

    Raises:
        KeyError: ``name`` is neither registered nor an import path (lists the valid names).
        ImportError: the import path's module or attribute does not exist.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if not is_import_path(name):
        raise KeyError(
            f"unknown backbone {name!r}; valid: {', '.join(sorted(BACKBONES))} or an import path 'module:callable'"
        )
    module_name, _, attr = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportError(f"backbone {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportError(f"backbone {name!r} is not callable")
    return obj


def build_backbone(
    name: str, *, width: int, depth: int, stages: int, input_size: int, kwargs: Mapping[str, Any] | None = None
) -> tuple[nn.Module, int]:
    """Build a backbone and measure its feature width.

    Args:
        name: a :data:`BACKBONES` key or ``module:callable``.
        width, depth, stages: size knobs passed to registered factories.
        input_size: side of the square input images (for the probe pass).
        kwargs: extra keyword arguments (``backbone_kwargs`` in params).

    Returns:
        ``(module, features)``: the backbone, wrapped with :class:`GlobalPool` when it returns
        feature maps, and its output width.

    Raises:
        ValueError: the backbone's output is neither ``(B, F)`` nor ``(B, F, h, w)``.
    """
    factory = resolve_backbone(name)
    extra = dict(kwargs or {})
    module = factory(width=width, depth=depth, stages=stages, **extra) if name in BACKBONES else factory(**extra)
    if not isinstance(module, nn.Module):
        raise TypeError(f"backbone {name!r} returned {type(module).__name__}, not a torch.nn.Module")
    out = _probe(module, input_size)
    if out.ndim == 4:
        module, out = nn.Sequential(module, GlobalPool()), out.mean(dim=(-2, -1))
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(
            f"backbone {name!r} maps (2, 3, {input_size}, {input_size}) images to shape {tuple(out.shape)}; "
            "expected (2, F) or (2, F, h, w)"
        )
    return module, int(out.shape[1])


def _probe(module: nn.Module, input_size: int) -> torch.Tensor:
    """One forward pass in eval mode (BN running stats untouched, no RNG used); mode restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(2, 3, input_size, input_size))
    finally:
        module.train(was_training)
