"""The original ViTPose, on transformers' ``VitPoseForPoseEstimation``: build, load, take apart.

Two ways to get one: :func:`build_vitpose` from a :class:`ViTPoseSize` (random init, the
embedded default, trained from scratch on COCO) or :func:`load_vitpose` from a folder (ours, or
a user's converted ViTPose checkpoint). The rest takes the model apart *without* changing what
it computes, so VLPose can run the original's own modules stage by stage:

* :func:`backbone_tokens` — the patch tokens ``E`` the head sees (``(B, N, D)``);
* :func:`tokens_to_grid` — ``E`` as the ``(B, D, h, w)`` map, exactly as transformers does it;
* :data:`DECODER_STAGES` — transformers' two heads as stages. The *classic* head
  (``use_simple_decoder=False``, ViTPose's "deconv" decoder) is two deconv–BN–ReLU blocks
  (×2 each) then a 1×1 conv to the heatmaps; the *simple* head is ReLU + bilinear ×4 then a
  3×3 conv. Each head's final ``conv`` is left out of the stages.

Running ``head.conv`` on the stages' output is bit for bit the head's own ``forward`` (same
modules, same order), which is what VLPose's revert guarantee rests on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation
from transformers.models.vitpose.modeling_vitpose import VitPoseClassicDecoder, VitPoseSimpleDecoder

from pipeline.convstem import CONFIG_FIELD, check_patch_size, install_conv_stem, stem_width
from pipeline.keypoints import NUM_COCO_KEYPOINTS

__all__ = [
    "ViTPoseSize",
    "vitpose_config",
    "build_vitpose",
    "load_vitpose",
    "load_vitpose_config",
    "input_size",
    "heatmap_size",
    "size_of",
    "backbone_tokens",
    "tokens_to_grid",
    "DECODER_STAGES",
    "decoder_stages",
    "stage_channels",
]


@dataclass(frozen=True)
class ViTPoseSize:
    """Sizes of a ViTPose built from scratch (defaults: the tiny embedded model).

    Attributes:
        image_height, image_width: model input (ViTPose: 256×192, the crops' 3:4).
        patch_size: square patch side (16 → a 16×12 token grid at 256×192).
        hidden_size, num_layers, num_heads, mlp_ratio: the ViT backbone.
        num_keypoints: heatmaps out (17 COCO joints).
        simple_decoder: transformers' simple head (ReLU, ×4 upsample, 3×3 conv) instead of the
            classic deconv head the VLPose paper's dual decoder twins.
        conv_stem: first-block width of a convolutional stem in place of the patchify conv
            (:mod:`pipeline.convstem`; 0 = ViTPose's own patch embedding).
    """

    image_height: int = 256
    image_width: int = 192
    patch_size: int = 16
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    num_keypoints: int = NUM_COCO_KEYPOINTS
    simple_decoder: bool = False
    conv_stem: int = 0

    def __post_init__(self) -> None:
        if self.image_height % self.patch_size or self.image_width % self.patch_size:
            raise ValueError(
                f"image size {self.image_height}×{self.image_width} is not a multiple of patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.conv_stem < 0:
            raise ValueError(f"conv_stem {self.conv_stem} must be >= 0 (0: the patchify conv)")
        if self.conv_stem:
            check_patch_size(self.patch_size)


def vitpose_config(size: ViTPoseSize) -> VitPoseConfig:
    """The transformers config of a :class:`ViTPoseSize`."""
    backbone = VitPoseBackboneConfig(
        image_size=(size.image_height, size.image_width),
        patch_size=(size.patch_size, size.patch_size),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        mlp_ratio=size.mlp_ratio,
        out_indices=[size.num_layers],
    )
    setattr(backbone, CONFIG_FIELD, size.conv_stem)  # saved in config.json: loading rebuilds the stem
    return VitPoseConfig(
        backbone_config=backbone, use_simple_decoder=size.simple_decoder, num_labels=size.num_keypoints
    )


class ViTPoseModel(VitPoseForPoseEstimation):
    """transformers' ViTPose, with the conv stem its backbone config records (none: unchanged).

    The stem is built in the constructor, so ``from_pretrained`` loads its weights; a user's
    converted checkpoint has no ``conv_stem_width`` and loads as ``VitPoseForPoseEstimation``.
    """

    def __init__(self, config: VitPoseConfig):
        super().__init__(config)
        backbone = config.backbone_config
        patch = backbone.patch_size[0] if isinstance(backbone.patch_size, (list, tuple)) else backbone.patch_size
        if install_conv_stem(self.backbone.embeddings.patch_embeddings, "projection", backbone, patch):
            self.post_init()


def build_vitpose(size: ViTPoseSize | None = None, seed: int = 0) -> VitPoseForPoseEstimation:
    """A randomly initialised ViTPose; the same ``seed`` gives the same weights (resume rebuilds it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViTPoseModel(vitpose_config(size or ViTPoseSize()))


def load_vitpose(folder: str | Path) -> VitPoseForPoseEstimation:
    """Load a ``save_pretrained`` ViTPose folder (safetensors, no network).

    Raises:
        FileNotFoundError: ``folder`` holds no ``config.json``.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a ViTPose model folder (no config.json)")
    return ViTPoseModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)


def size_of(model: VitPoseForPoseEstimation) -> dict:
    """The :class:`ViTPoseSize` fields of a model (for run metadata)."""
    b = model.config.backbone_config
    size = ViTPoseSize(
        image_height=b.image_size[0],
        image_width=b.image_size[1],
        patch_size=b.patch_size[0],
        hidden_size=b.hidden_size,
        num_layers=b.num_hidden_layers,
        num_heads=b.num_attention_heads,
        mlp_ratio=b.mlp_ratio,
        num_keypoints=model.config.num_labels,
        simple_decoder=model.config.use_simple_decoder,
        conv_stem=stem_width(b),
    )
    return asdict(size)


def _config(model_or_config: VitPoseForPoseEstimation | VitPoseConfig) -> VitPoseConfig:
    return model_or_config if isinstance(model_or_config, VitPoseConfig) else model_or_config.config


def input_size(model_or_config: VitPoseForPoseEstimation | VitPoseConfig) -> tuple[int, int]:
    """Model input ``(h, w)``."""
    h, w = _config(model_or_config).backbone_config.image_size
    return int(h), int(w)


def _patch_grid(config: VitPoseConfig) -> tuple[int, int]:
    b = config.backbone_config
    return b.image_size[0] // b.patch_size[0], b.image_size[1] // b.patch_size[1]


def heatmap_size(model_or_config: VitPoseForPoseEstimation | VitPoseConfig) -> tuple[int, int]:
    """Heatmap ``(H, W)``: the token grid ×4 (two stride-2 deconvs, or the simple head's upsample)."""
    config = _config(model_or_config)
    ph, pw = _patch_grid(config)
    factor = config.scale_factor if config.use_simple_decoder else 4
    return ph * factor, pw * factor


def load_vitpose_config(folder: str | Path) -> VitPoseConfig:
    """Only the config of a ViTPose folder (sizes without loading weights)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a ViTPose model folder (no config.json)")
    return VitPoseConfig.from_pretrained(str(folder), local_files_only=True)


def backbone_tokens(model: VitPoseForPoseEstimation, pixel_values: torch.Tensor) -> torch.Tensor:
    """The backbone's last feature map (after its layer norm), ``(B, N, D)``: what the head sees."""
    dataset_index = None
    if model.config.backbone_config.num_experts > 1:  # ViTPose+ MoE: expert 0 = COCO
        dataset_index = torch.zeros(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
    out = model.backbone.forward_with_filtered_kwargs(pixel_values, dataset_index=dataset_index)
    return out.feature_maps[-1]


def tokens_to_grid(model: VitPoseForPoseEstimation, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` tokens → ``(B, D, h, w)``, the same ops as ``VitPoseForPoseEstimation.forward``."""
    ph, pw = _patch_grid(model.config)
    return tokens.permute(0, 2, 1).reshape(tokens.shape[0], -1, ph, pw).contiguous()


# ---------------------------------------------------------------- the heads as stages
def _classic_stage_1(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head.relu1(head.batchnorm1(head.deconv1(x)))


def _classic_stage_2(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head.relu2(head.batchnorm2(head.deconv2(x)))


def _simple_stage(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return head.upsampling(head.activation(x))


Stage = Callable[[nn.Module, torch.Tensor], torch.Tensor]

# Head class → its stages before the final ``conv``, and each stage's output channels.
DECODER_STAGES: dict[type, tuple[tuple[Stage, ...], Callable[[nn.Module], tuple[int, ...]]]] = {
    VitPoseClassicDecoder: (
        (_classic_stage_1, _classic_stage_2),
        lambda head: (head.deconv1.out_channels, head.deconv2.out_channels),
    ),
    VitPoseSimpleDecoder: ((_simple_stage,), lambda head: (head.conv.in_channels,)),
}


def _entry(head: nn.Module) -> tuple[tuple[Stage, ...], Callable[[nn.Module], tuple[int, ...]]]:
    for cls, entry in DECODER_STAGES.items():
        if isinstance(head, cls):
            return entry
    valid = ", ".join(c.__name__ for c in DECODER_STAGES)
    raise TypeError(f"unsupported ViTPose head {type(head).__name__}; supported: {valid}")


def decoder_stages(head: nn.Module) -> tuple[Stage, ...]:
    """The stage functions of a head (each called as ``stage(head, x)``)."""
    return _entry(head)[0]


def stage_channels(head: nn.Module) -> tuple[int, ...]:
    """Output channels of each stage of a head."""
    return _entry(head)[1](head)
