"""The conv stem: same token grid as the patchify conv it replaces, rebuilt on load, absent by default."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.convstem import ConvStem
from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose, load_vitpose, size_of
from pipeline.vlm.families import get_family
from pipeline.vlm.tiny import TinyVLMConfig, build_tiny_vlm, save_vlm


@pytest.mark.parametrize(("patch", "size"), [(8, (64, 64)), (32, (128, 96)), (16, (256, 192))])
def test_stem_gives_the_patchify_grid(patch, size):
    x = torch.randn(2, 3, *size)
    patchify = nn.Conv2d(3, 40, patch, stride=patch)
    assert ConvStem(3, 40, patch, width=8)(x).shape == patchify(x).shape


def test_residual_depth_keeps_the_grid_and_adds_blocks():
    x = torch.randn(2, 3, 64, 64)
    plain, deep = ConvStem(3, 40, 8, width=8), ConvStem(3, 40, 8, width=8, depth=2)
    assert deep(x).shape == plain(x).shape == (2, 40, 8, 8)
    extra = sum(p.numel() for p in deep.parameters()) - sum(p.numel() for p in plain.parameters())
    # two residual blocks (two 3x3 convs + two GroupNorms each) per stage of 8, 16, 32 channels
    assert extra == sum(2 * (2 * 9 * c * c + 4 * c) for c in (8, 16, 32))


def test_tiny_vlm_config_refuses_a_depth_without_a_stem():
    with pytest.raises(ValueError, match="conv_stem_depth needs a conv stem"):
        TinyVLMConfig(conv_stem_depth=1)


@pytest.mark.parametrize("patch", [1, 3, 12])
def test_stem_refuses_a_patch_that_is_not_a_power_of_two(patch):
    with pytest.raises(ValueError, match="power of two"):
        ConvStem(3, 16, patch)


def test_tiny_vlm_config_refuses_a_stem_on_an_odd_patch():
    with pytest.raises(ValueError, match="conv_stem"):
        TinyVLMConfig(image_size=60, patch_size=6, conv_stem=16)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("depth", [0, 1])
def test_tiny_vlm_with_a_stem_saves_and_loads_bit_identical(tmp_path, depth):
    model, processor = build_tiny_vlm(TinyVLMConfig(conv_stem=16, conv_stem_depth=depth))
    embedding = model.model.vision_tower.embeddings.patch_embedding
    assert isinstance(embedding, ConvStem)
    save_vlm(model, processor, tmp_path / "base")
    loaded, _ = get_family("tiny").load(tmp_path / "base")
    assert isinstance(loaded.model.vision_tower.embeddings.patch_embedding, ConvStem)
    assert _same_weights(model, loaded)
    pixels = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a = model.model.get_image_features(pixel_values=pixels)
        b = loaded.model.get_image_features(pixel_values=pixels)
    a = getattr(a, "pooler_output", a)
    b = getattr(b, "pooler_output", b)
    assert torch.equal(torch.cat(list(a)), torch.cat(list(b)))


def test_tiny_vlm_without_a_stem_keeps_clips_patch_conv(tmp_path):
    model, processor = build_tiny_vlm(TinyVLMConfig())
    assert type(model.model.vision_tower.embeddings.patch_embedding) is nn.Conv2d
    save_vlm(model, processor, tmp_path / "base")
    loaded, _ = get_family("tiny").load(tmp_path / "base")
    assert type(loaded.model.vision_tower.embeddings.patch_embedding) is nn.Conv2d
    assert _same_weights(model, loaded)


def test_vitpose_with_a_stem_saves_and_loads_bit_identical(tmp_path):
    size = ViTPoseSize(image_height=128, image_width=96, patch_size=32, hidden_size=32, num_layers=1, conv_stem=8)
    model = build_vitpose(size, seed=1).eval()
    assert isinstance(model.backbone.embeddings.patch_embeddings.projection, ConvStem)
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        heatmaps = model(pixel_values=x).heatmaps
    assert heatmaps.shape == (2, 17, 16, 12)
    model.save_pretrained(tmp_path / "vitpose")
    loaded = load_vitpose(tmp_path / "vitpose")
    assert size_of(loaded)["conv_stem"] == 8
    assert _same_weights(model, loaded)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).heatmaps, heatmaps)


def test_vitpose_without_a_stem_is_transformers_own():
    model = build_vitpose(ViTPoseSize(image_height=128, image_width=96, patch_size=32, hidden_size=32, num_layers=1))
    assert type(model.backbone.embeddings.patch_embeddings.projection) is nn.Conv2d
    assert size_of(model)["conv_stem"] == 0
