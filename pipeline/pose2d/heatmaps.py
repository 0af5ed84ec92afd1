"""Keypoint heatmaps: Gaussian targets, masked MSE loss, and decoding with DARK sub-pixel refinement.

Coordinates. Crops follow the project's *continuous* convention (pixel ``i`` covers ``[i, i+1)``,
:func:`pipeline.imaging.crop_resize`). Heatmaps follow UDP — "unbiased data processing"
(Huang et al., CVPR 2020, https://arxiv.org/abs/1911.07524), the convention ViTPose's released
weights were trained with and that transformers' ``post_process_pose_estimation`` inverts:
heatmap index ``0`` sits on the centre of the first input pixel (crop ``x = 0.5``) and index
``W_h − 1`` on the centre of the last one (``x = w − 0.5``)::

    u = (x − 0.5) · (W_h − 1) / (w − 1)        x = 0.5 + u · (w − 1) / (W_h − 1)

so a user's ViTPose checkpoint and ours read the same heatmap the same way.

Decoding is the argmax refined by DARK — "Distribution-Aware coordinate Representation of
Keypoints" (Zhang et al., CVPR 2020, https://arxiv.org/abs/1910.06278): optionally smooth the
heatmap with a Gaussian (DARK's "modulation"), take its log, and move from the argmax ``m`` by
the Newton step ``−H⁻¹·∇`` of a second-order Taylor expansion. On a Gaussian the log is a
quadratic, so the step lands on the centre exactly; where the Taylor step is unusable (argmax on
the border, a Hessian that is not negative definite) the classic quarter-pixel shift toward the
higher neighbour is used instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "crop_to_heatmap",
    "heatmap_to_crop",
    "gaussian_targets",
    "masked_mse",
    "decode_heatmaps",
    "default_blur_kernel",
]


def crop_to_heatmap(xy: torch.Tensor, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> torch.Tensor:
    """Map ``(..., 2)`` crop-pixel ``x, y`` to heatmap index coordinates (UDP, module docstring).

    Args:
        xy: points in input pixels (continuous convention).
        input_size: model input ``(h, w)``.
        heatmap_size: heatmap ``(H, W)``.
    """
    scale = _udp_scale(input_size, heatmap_size, xy)
    return (xy - 0.5) * scale


def heatmap_to_crop(uv: torch.Tensor, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`crop_to_heatmap`: heatmap index coordinates → crop pixels."""
    scale = _udp_scale(input_size, heatmap_size, uv)
    return uv / scale + 0.5


def _udp_scale(input_size: tuple[int, int], heatmap_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    (h, w), (hh, hw) = input_size, heatmap_size
    return torch.tensor([(hw - 1) / (w - 1), (hh - 1) / (h - 1)], dtype=like.dtype, device=like.device)


def gaussian_targets(
    keypoints: torch.Tensor,
    visibility: torch.Tensor,
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised Gaussian heatmaps (peak 1) and per-joint target weights.

    Args:
        keypoints: ``(B, K, 2)`` crop-pixel ``x, y``.
        visibility: ``(B, K)`` COCO ``v`` (0 unlabelled, 1 occluded, 2 visible).
        input_size: model input ``(h, w)``.
        heatmap_size: heatmap ``(H, W)``.
        sigma: Gaussian standard deviation in heatmap cells (2 for a 64×48 heatmap, as ViTPose).

    Returns:
        ``targets`` ``(B, K, H, W)`` float32 and ``weights`` ``(B, K)``: 1 for labelled joints
        (``v > 0``, occluded ones included, as COCO training does) whose Gaussian reaches the
        heatmap; 0 otherwise (unlabelled joints carry no position, far-off ones no signal).
    """
    hh, hw = heatmap_size
    uv = crop_to_heatmap(keypoints.float(), input_size, heatmap_size)  # (B, K, 2)
    xs = torch.arange(hw, dtype=torch.float32, device=uv.device)
    ys = torch.arange(hh, dtype=torch.float32, device=uv.device)
    gx = torch.exp(-((xs - uv[..., :1]) ** 2) / (2 * sigma**2))  # (B, K, W)
    gy = torch.exp(-((ys - uv[..., 1:]) ** 2) / (2 * sigma**2))  # (B, K, H)
    targets = gy[..., :, None] * gx[..., None, :]  # separable: exp(-(dx²+dy²)/2σ²)
    reach = 3 * sigma  # mmpose's rule: a Gaussian wholly off the map (beyond 3σ) teaches nothing
    inside = (
        (uv[..., 0] > -reach) & (uv[..., 0] < hw - 1 + reach) & (uv[..., 1] > -reach) & (uv[..., 1] < hh - 1 + reach)
    )
    weights = ((visibility > 0) & inside).float()
    targets = targets * weights[..., None, None]  # unlabelled joints: an all-zero map
    return targets, weights


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Heatmap MSE over the joints with weight > 0, averaged per weighted joint.

    transformers' ``VitPoseForPoseEstimation`` raises ``NotImplementedError`` when given labels;
    this is the loss of ViTPose/mmpose's ``KeypointMSELoss(use_target_weight=True)`` except that
    it divides by the *weighted* number of joints rather than by all ``B·K``, so a batch of
    mostly unlabelled joints does not shrink the loss (and its gradients) toward zero.

    Args:
        pred: ``(B, K, H, W)`` predicted heatmaps.
        target: ``(B, K, H, W)`` targets.
        weights: ``(B, K)`` per-joint weights (0 drops the joint from loss and gradient).

    Returns:
        A scalar; 0 (still attached to ``pred``) when every weight is 0.
    """
    per_joint = (pred.float() - target.float()).pow(2).mean(dim=(-2, -1))  # (B, K)
    w = weights.float()
    return (per_joint * w).sum() / w.sum().clamp_min(1.0)


def _gaussian_blur(heatmaps: torch.Tensor, kernel: int) -> torch.Tensor:
    """DARK's modulation: Gaussian-smooth each map (OpenCV's σ for ``kernel``), keep its max."""
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    r = torch.arange(kernel, dtype=heatmaps.dtype, device=heatmaps.device) - (kernel - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    b, k, h, w = heatmaps.shape
    x = heatmaps.reshape(b * k, 1, h, w)
    pad = kernel // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0)), g.view(1, 1, 1, kernel))
    x = F.conv2d(F.pad(x, (0, 0, pad, pad)), g.view(1, 1, kernel, 1))
    x = x.reshape(b, k, h, w)
    peak_before = heatmaps.amax(dim=(-2, -1), keepdim=True)
    peak_after = x.amax(dim=(-2, -1), keepdim=True)
    return x * peak_before / peak_after.clamp_min(1e-12)


def _quarter_offset(hm: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """The classic ±0.25-cell shift toward the higher neighbour, per axis (0 on the border)."""
    h, w = hm.shape[-2:]

    def at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        idx = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).unsqueeze(-1)
        return hm.flatten(-2).gather(-1, idx).squeeze(-1)

    zero = torch.zeros_like(hm[..., 0, 0])
    dx = torch.where((ix > 0) & (ix < w - 1), torch.sign(at(ix + 1, iy) - at(ix - 1, iy)), zero)
    dy = torch.where((iy > 0) & (iy < h - 1), torch.sign(at(ix, iy + 1) - at(ix, iy - 1)), zero)
    return 0.25 * torch.stack([dx, dy], dim=-1)


def _taylor_offset(log_hm: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DARK's Newton step ``−H⁻¹∇`` from the argmax, and where it is usable.

    The derivatives are central differences around the argmax moved one cell inward when it lies
    on the border: exact for a quadratic wherever they are taken, so a joint near the crop's edge
    is refined too.
    """
    h, w = log_hm.shape[-2:]
    flat = log_hm.flatten(-2)
    cx, cy = ix.clamp(1, max(1, w - 2)), iy.clamp(1, max(1, h - 2))

    def at(dx: int, dy: int) -> torch.Tensor:
        x, y = (cx + dx).clamp(0, w - 1), (cy + dy).clamp(0, h - 1)
        return flat.gather(-1, (y * w + x).unsqueeze(-1)).squeeze(-1)

    c = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2 * c + at(-1, 0)
    hyy = at(0, 1) - 2 * c + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    usable = (w >= 3) & (h >= 3) & (hxx < 0) & (det > 1e-12)  # a proper maximum: H negative definite
    safe = torch.where(usable, det, torch.ones_like(det))
    ox = -(hyy * gx - hxy * gy) / safe
    oy = -(hxx * gy - hxy * gx) / safe
    offset = torch.stack([cx - ix + ox, cy - iy + oy], dim=-1)  # relative to the argmax
    usable = usable & (offset.abs() <= 1.0).all(dim=-1)  # a step past the neighbours is not local
    return offset, usable


def decode_heatmaps(
    heatmaps: torch.Tensor,
    input_size: tuple[int, int],
    *,
    blur_kernel: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints in crop-input pixels and a score per joint, from ``(B, K, H, W)`` heatmaps.

    Args:
        heatmaps: predicted (or target) heatmaps.
        input_size: model input ``(h, w)`` the heatmaps belong to.
        blur_kernel: odd kernel size of DARK's Gaussian modulation; 0 or 1 = none. Use ~11 for
            64×48 model outputs (ViTPose's setting, :func:`default_blur_kernel`), 0 for exact
            Gaussians. The blur pads with zeros (as mmpose), which pulls joints within about a
            kernel of the border slightly inward.

    Returns:
        ``keypoints`` ``(B, K, 2)`` in crop-input pixels (continuous convention) and ``scores``
        ``(B, K)`` = each heatmap's maximum (the usual top-down joint confidence).
    """
    if blur_kernel > 1 and blur_kernel % 2 == 0:
        raise ValueError(f"blur_kernel must be odd, got {blur_kernel}")
    hm = heatmaps.detach().float()
    _, _, h, w = hm.shape
    scores, idx = hm.flatten(-2).max(dim=-1)
    iy, ix = idx // w, idx % w
    smooth = _gaussian_blur(hm, blur_kernel) if blur_kernel > 1 else hm
    log_hm = torch.log(smooth.clamp_min(1e-10))
    taylor, usable = _taylor_offset(log_hm, ix, iy)
    offset = torch.where(usable[..., None], taylor, _quarter_offset(hm, ix, iy))
    uv = torch.stack([ix, iy], dim=-1).float() + offset
    return heatmap_to_crop(uv, input_size, (h, w)), scores


def default_blur_kernel(heatmap_size: tuple[int, int]) -> int:
    """DARK's kernel for model outputs: 11 at ViTPose's 64×48, scaled (odd, ≥ 3) for other sizes."""
    k = int(math.floor(11 * min(heatmap_size) / 48))
    k = max(3, k)
    return k if k % 2 == 1 else k + 1
