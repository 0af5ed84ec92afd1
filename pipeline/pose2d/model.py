"""VLPose: a frozen ViTPose plus a language-conditioned twin decoder that can always be switched off.

VLPose (Li et al., 2024, https://arxiv.org/abs/2402.14456) adapts a trained pose model to new
domains (paintings, sculpture…) without touching it:

1. the original ViTPose backbone gives patch tokens ``E`` (frozen);
2. the relation matcher (:class:`~pipeline.pose2d.matcher.RelationMatcher`) mixes ``E`` with the
   domain prompt's tokens ``T`` into ``R = LN(E + Proj(A·V))``;
3. the **dual extractor–injector decoder**: the original head's stages run on ``E`` (frozen, the
   *extractor*) while a trainable twin of those stages runs on ``R``; after every stage the twin's
   output, through a 1×1 *injector* conv, is added to the original's, and the original's final
   conv (the 1×1 head of the classic decoder) turns the sum into 17 heatmaps.

The injectors start at zero (as ControlNet's "zero convolutions",
https://arxiv.org/abs/2302.05543), so training starts from exactly the original's heatmaps and
the twin is a copy of the original's stages (same starting weights, as the paper's twin).
With ``inject=False`` the forward pass is the original model's own modules in the original's
order: heatmaps bit-identical to ``VitPoseForPoseEstimation``'s — the paper's "revert to the
original weights" guarantee, tested with ``torch.equal``.

The original stays in eval mode whatever ``train()`` says, so its batch-norm statistics never move.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import VitPoseForPoseEstimation

from pipeline.pose2d.matcher import RelationMatcher
from pipeline.pose2d.vitpose import backbone_tokens, decoder_stages, stage_channels, tokens_to_grid

__all__ = ["VLPoseConfig", "VLPoseModel", "heatmaps_of"]


@dataclass(frozen=True)
class VLPoseConfig:
    """The VLPose extras on top of a ViTPose.

    Attributes:
        text_dim: size of the prompt embeddings (384: all-MiniLM-L6-v2; a CLIP tower's projection).
        num_heads: heads of the relation matcher (must divide the backbone width).
        num_text_tokens: tokens one prompt embedding becomes (``M`` in ``K, V = [E; T]·W``).
        dropout: attention dropout of the matcher while training.
    """

    text_dim: int = 384
    num_heads: int = 4
    num_text_tokens: int = 1
    dropout: float = 0.0


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _twin_of(head: nn.Module) -> nn.Module:
    """A trainable copy of the head's stages (its final ``conv`` dropped: the original's is shared)."""
    twin = copy.deepcopy(head)
    twin.conv = None
    twin.requires_grad_(True)
    return twin


class VLPoseModel(nn.Module):
    """The frozen original ViTPose + relation matcher + twin decoder with zero-initialised injectors.

    Args:
        original: the ViTPose to adapt; frozen in place (``requires_grad=False``, eval mode).
        config: the VLPose extras.

    Attributes:
        inject: default of :meth:`forward`'s switch; ``False`` gives the original's heatmaps.
    """

    def __init__(self, original: VitPoseForPoseEstimation, config: VLPoseConfig | None = None):
        super().__init__()
        self.vlpose_config = config or VLPoseConfig()
        self.original = original
        self.original.requires_grad_(False)
        self.original.eval()
        hidden = original.config.backbone_config.hidden_size
        c = self.vlpose_config
        self.matcher = RelationMatcher(hidden, c.text_dim, c.num_heads, c.num_text_tokens, c.dropout)
        self.twin = _twin_of(original.head)
        self.injectors = nn.ModuleList(_zero_conv(ch) for ch in stage_channels(original.head))
        self.inject = True

    def train(self, mode: bool = True) -> VLPoseModel:
        """Train the matcher and twin; the original always stays in eval mode (frozen BN statistics)."""
        super().train(mode)
        self.original.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the original: what VLPose adds (matcher, twin, injectors)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("original.")}

    def forward(
        self, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None, inject: bool | None = None
    ) -> torch.Tensor:
        """Heatmaps ``(B, K, H, W)``.

        Args:
            pixel_values: ``(B, 3, h, w)`` normalised crops at the original's input size.
            text_embeds: ``(B, text_dim)`` prompt embeddings; needed when injecting.
            inject: run the twin and add it (default: :attr:`inject`); ``False`` = the original.

        Raises:
            ValueError: injecting without ``text_embeds``.
        """
        inject = self.inject if inject is None else inject
        head = self.original.head
        tokens = backbone_tokens(self.original, pixel_values)
        x = tokens_to_grid(self.original, tokens)
        stages = decoder_stages(head)
        if not inject:
            for stage in stages:
                x = stage(head, x)
            return head.conv(x)
        if text_embeds is None:
            raise ValueError("VLPose needs text_embeds (one prompt embedding per image) when inject=True")
        y = tokens_to_grid(self.original, self.matcher(tokens, text_embeds.to(tokens.dtype)))
        for stage, injector in zip(stages, self.injectors, strict=True):
            x = stage(head, x)
            y = stage(self.twin, y)
            x = x + injector(y)
        return head.conv(x)


def heatmaps_of(model: nn.Module, pixel_values: torch.Tensor, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Heatmaps of either model kind (a DeepSpeed engine wrapping one included).

    ViTPose ignores ``text_embeds``; VLPose uses its :attr:`VLPoseModel.inject` switch.
    """
    module = getattr(model, "module", model)
    if isinstance(module, VLPoseModel):
        return model(pixel_values=pixel_values, text_embeds=text_embeds)
    return model(pixel_values=pixel_values).heatmaps
