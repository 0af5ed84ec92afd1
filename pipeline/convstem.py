"""A convolutional stem in place of a ViT's patch embedding, for the tiny models trained from scratch.

A ViT's patch embedding is one ``patch × patch`` convolution with stride ``patch``: it sees
each patch once, with no notion of where inside the patch an edge lies. Trained from scratch on
a few thousand images, the embedded default's tiny ViTs (the VLM's CLIP tower, the original
ViTPose) read geometry far worse than a small CNN on the same crops (docs/vlm_learning.md,
docs/vlpose_learning.md). Replacing the patchify with a few strided 3×3 convolutions ("early
convolutions", Xiao et al. 2021) gives the transformer the CNN's local features at the same
token grid, so nothing else in the model changes: same token count, same width, same position
embeddings, the same LoRA target names.

The stem is recorded in the model's config (``conv_stem_width`` on the vision or backbone
config) and the model classes that use it install it in their constructor
(:func:`install_conv_stem`), so ``from_pretrained`` rebuilds it before loading the weights.
Real checkpoints have no such field and load exactly as before.

GroupNorm, not BatchNorm: a LoRA run trains with the base frozen, and batch-norm running
statistics would still move during it without being part of the adapter.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "ConvStem",
    "CONFIG_FIELD",
    "DEPTH_FIELD",
    "check_patch_size",
    "install_conv_stem",
    "stem_depth",
    "stem_width",
]

# Name of the config attribute that records the stem (0 / absent: the plain patch embedding).
CONFIG_FIELD = "conv_stem_width"
# Residual blocks after each strided block (0 / absent: the plain stem): a deeper stem is a
# small ResNet under the transformer, the network that transfers across datasets here.
DEPTH_FIELD = "conv_stem_depth"


def check_patch_size(patch_size: int) -> int:
    """The stem's number of strided blocks, ``log2(patch_size)``.

    Raises:
        ValueError: ``patch_size`` is not a power of two ≥ 2 (the stem halves the side per block).
    """
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"conv_stem: patch_size {patch_size} is not a power of two >= 2")
    return patch_size.bit_length() - 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _Residual(nn.Module):
    """3×3 conv–GN–ReLU–3×3 conv–GN plus the input, then ReLU (a ResNet basic block, GroupNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ConvStem(nn.Module):
    """``log2(patch)`` stride-2 3×3 conv–GroupNorm–ReLU blocks, then a 1×1 conv to the model width.

    The output has the shape of the patch embedding it replaces: ``(B, out_channels, H/patch,
    W/patch)``. Channels start at ``width`` and double per block, capped at ``out_channels``.

    Args:
        in_channels: image channels.
        out_channels: the ViT's hidden size.
        patch_size: the patch side it replaces; a power of two ≥ 2.
        width: channels of the first block.
        depth: residual blocks after each strided block (0: none).
    """

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, width: int = 32, depth: int = 0):
        super().__init__()
        blocks = check_patch_size(patch_size)
        if width < 1 or depth < 0:
            raise ValueError(f"conv stem: width {width} must be >= 1 and depth {depth} >= 0")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(blocks):
            out = min(width * 2**i, max(out_channels, width))
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                _norm(out),
                nn.ReLU(inplace=True),
                *(_Residual(out) for _ in range(depth)),
            ]
            channels = out
        self.blocks = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, out_channels, 1)

    @property
    def weight(self) -> torch.Tensor:
        """The last conv's weight: callers read the patch embedding's ``weight.dtype``."""
        return self.proj.weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(pixel_values))


def stem_width(config: object) -> int:
    """The stem width a (sub-)config records; 0 when it has none."""
    return int(getattr(config, CONFIG_FIELD, 0) or 0)


def stem_depth(config: object) -> int:
    """The residual depth a (sub-)config records; 0 when it has none."""
    return int(getattr(config, DEPTH_FIELD, 0) or 0)


def install_conv_stem(parent: nn.Module, attr: str, config: object, patch_size: int) -> bool:
    """Replace ``parent.<attr>`` (a patchify ``Conv2d``) by a :class:`ConvStem` when ``config`` asks.

    Args:
        parent: the module that owns the patch-embedding conv.
        attr: its attribute name (CLIP: ``patch_embedding``; ViTPose: ``projection``).
        config: the vision/backbone config; its ``conv_stem_width`` (0/absent: keep the conv) and
            ``conv_stem_depth``.
        patch_size: the conv's patch side.

    Returns:
        Whether a stem was installed.
    """
    width = stem_width(config)
    if not width:
        return False
    conv = getattr(parent, attr)
    setattr(parent, attr, ConvStem(conv.in_channels, conv.out_channels, patch_size, width, stem_depth(config)))
    return True
