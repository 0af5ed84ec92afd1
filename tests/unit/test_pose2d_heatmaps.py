"""Heatmap targets and decoding: known keypoints survive encode → decode; the loss ignores masked joints."""

from __future__ import annotations

import pytest
import torch

from pipeline.pose2d.heatmaps import (
    crop_to_heatmap,
    decode_heatmaps,
    default_blur_kernel,
    gaussian_targets,
    heatmap_to_crop,
    masked_mse,
)

GEOMETRIES = [((256, 192), (64, 48), 2.0), ((128, 96), (32, 24), 1.0)]


def _random_keypoints(n: int, input_size: tuple[int, int], margin: float = 0.5, seed: int = 0) -> torch.Tensor:
    h, w = input_size
    g = torch.Generator().manual_seed(seed)
    unit = torch.rand(n, 17, 2, generator=g)
    return unit * torch.tensor([w - 2 * margin, h - 2 * margin]) + margin


def test_udp_mapping_puts_heatmap_ends_on_the_first_and_last_pixel_centres():
    size, hm = (256, 192), (64, 48)
    ends = torch.tensor([[0.5, 0.5], [191.5, 255.5]])
    assert torch.allclose(crop_to_heatmap(ends, size, hm), torch.tensor([[0.0, 0.0], [47.0, 63.0]]))
    xy = _random_keypoints(3, size)
    assert torch.allclose(heatmap_to_crop(crop_to_heatmap(xy, size, hm), size, hm), xy, atol=1e-4)


@pytest.mark.parametrize("input_size, heatmap_size, sigma", GEOMETRIES)
def test_encode_decode_round_trip_is_sub_half_pixel_everywhere(input_size, heatmap_size, sigma):
    xy = _random_keypoints(16, input_size)  # border joints included: the Taylor stencil moves inward
    targets, weights = gaussian_targets(xy, torch.full((16, 17), 2), input_size, heatmap_size, sigma)
    assert targets.shape == (16, 17, *heatmap_size) and bool(weights.all())
    decoded, scores = decode_heatmaps(targets, input_size)
    assert (decoded - xy).abs().max() < 0.5
    assert (decoded - xy).abs().max() < 1e-2  # on an exact Gaussian DARK is exact
    assert torch.allclose(scores, targets.flatten(-2).amax(-1))


def test_argmax_alone_is_coarser_than_the_sub_pixel_step():
    size, hm = (256, 192), (64, 48)
    xy = _random_keypoints(16, size, seed=1)
    targets, _ = gaussian_targets(xy, torch.full((16, 17), 2), size, hm, 2.0)
    idx = targets.flatten(-2).argmax(-1)
    argmax_xy = heatmap_to_crop(torch.stack([idx % hm[1], idx // hm[1]], -1).float(), size, hm)
    assert (argmax_xy - xy).abs().max() > 1.0  # ±half a 4-px cell without refinement
    assert (decode_heatmaps(targets, size)[0] - xy).abs().max() < 0.5


def test_dark_modulation_keeps_interior_joints_within_half_a_pixel():
    size, hm = (256, 192), (64, 48)
    kernel = default_blur_kernel(hm)
    assert kernel == 11
    xy = _random_keypoints(16, size, margin=24.0, seed=2)  # zero padding biases the blur at the border
    targets, _ = gaussian_targets(xy, torch.full((16, 17), 2), size, hm, 2.0)
    decoded, _ = decode_heatmaps(targets, size, blur_kernel=kernel)
    assert (decoded - xy).abs().max() < 0.5
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(targets, size, blur_kernel=4)


def test_unlabelled_and_far_off_joints_get_zero_weight_and_an_empty_map():
    size, hm = (256, 192), (64, 48)
    xy = _random_keypoints(1, size)
    vis = torch.full((1, 17), 2)
    vis[0, 3] = 0  # unlabelled
    vis[0, 4] = 1  # labelled but occluded: still trained on, as COCO does
    xy[0, 5] = torch.tensor([-100.0, 50.0])  # far outside the crop
    targets, weights = gaussian_targets(xy, vis, size, hm, 2.0)
    assert weights[0, 3] == 0 and weights[0, 5] == 0 and weights[0, 4] == 1
    assert targets[0, 3].abs().sum() == 0 and targets[0, 5].abs().sum() == 0
    assert int(weights.sum()) == 15


def test_masked_mse_ignores_masked_joints_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 17, 8, 6, generator=g)
    weights = torch.ones(2, 17)
    weights[0, :5] = 0
    weights[1, 16] = 0
    pred = torch.rand(2, 17, 8, 6, generator=g, requires_grad=True)
    loss = masked_mse(pred, target, weights)
    loss.backward()
    assert (pred.grad[0, :5] == 0).all() and (pred.grad[1, 16] == 0).all()
    assert (pred.grad[0, 5:] != 0).any()
    keep = weights.bool()
    expected = (pred.detach() - target).pow(2).mean(dim=(-2, -1))[keep].mean()
    assert torch.allclose(loss, expected)

    changed = pred.detach().clone()
    changed[0, :5] += 100.0  # anything at a masked joint
    assert torch.equal(masked_mse(changed, target, weights), loss.detach())
    assert masked_mse(target, target, weights) == 0
    assert masked_mse(pred, target, torch.zeros(2, 17)) == 0
