"""Articulated 2.5D human figures, rendered as photos or as art, with exact keypoint ground truth.

A figure is a skeleton of the 21 HumanArt joints (the 17 COCO joints + finger and toe tips, see
:mod:`pipeline.keypoints`) built from a sampled pose: body height, hip position, torso lean,
facing angle (front/side/back: shoulders and hips foreshorten, the face features slide round
the head, the person's left is on the image's right when facing the camera), limb swings, elbow
and knee bends and limb foreshortening.  It is drawn as capsules (torso, shoulders, hips, neck,
limbs, hands, feet) and a round head, through a per-pixel distance field that also gives a
surface normal, so one field serves every look: shaded photos and sculptures, flat cartoons with
outlines, pencil hatching, ink wash, silhouettes.

Several figures per image are drawn far to near (with occluder objects and, sometimes, a distant
crowd between them) into an *owner map*; from it come the labels, exactly as an annotator sees
them: a joint is ``v=2`` when its pixel shows its own figure, ``v=1`` when another figure or an
occluder covers it (self-occlusion is not modelled), ``v=0`` (and ``x=y=0``, as COCO writes it)
when it falls outside the image or, rarely, the annotator skipped it.  The box is the extent of
the visible pixels, the area their count, the segmentation their RLE.  A distant crowd becomes
one ``iscrowd=1`` region with no keypoints, as in COCO.

A :class:`Style` says how a domain looks (background, palette, fill, outline, post-effects and
pose statistics); :data:`STYLES` holds one per domain: ``photo`` (COCO) and each HumanArt scene.
Everything is drawn with vectorised numpy and PIL filters and is deterministic given the
``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.keypoints import COCO_SCENE, HUMANART_SCENES, NUM_COCO_KEYPOINTS, NUM_HUMANART_KEYPOINTS

__all__ = [
    "PoseStats",
    "Style",
    "PersonGT",
    "SceneRender",
    "STYLES",
    "style_for",
    "sample_skeleton",
    "render_scene",
    "mask_to_rle",
]

RGB = tuple[float, float, float]

# Joint indices in HumanArt order (the first 17 are COCO's).
(NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SH, R_SH, L_EL, R_EL, L_WR, R_WR,
 L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN, L_FI, R_FI, L_TO, R_TO) = range(NUM_HUMANART_KEYPOINTS)  # fmt: skip

# Colour groups of body parts; HAIR is painted inside the head.
SKIN, TOP, FOREARM, BOTTOM, SHOES, HAIR = range(6)

# Owner-map codes besides figure indices (>= 0).
BACKGROUND, OCCLUDER, CROWD = -1, -2, -3

KEYPOINT_DECIMALS = 2  # annotations store keypoints to 1/100 px; the figure is drawn from the rounded values


# --------------------------------------------------------------------------------------------
# Styles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseStats:
    """Pose statistics of a domain (angles in radians).

    Attributes:
        lean: std of the torso lean from upright.
        invert_prob: probability of an upside-down body (handstands in acrobatics).
        back_prob: probability that the figure faces away from the camera.
        arm_spread: half-range of the upper-arm swing from hanging down.
        elbow_bend: half-range of the elbow bend.
        leg_spread: std of the thigh swing.
        knee_bend: maximum knee bend.
    """

    lean: float = 0.12
    invert_prob: float = 0.0
    back_prob: float = 0.12
    arm_spread: float = 1.6
    elbow_bend: float = 1.4
    leg_spread: float = 0.3
    knee_bend: float = 0.9


@dataclass(frozen=True)
class Style:
    """How one domain looks.

    Attributes:
        name: the domain (``photo`` for COCO, else a HumanArt scene).
        background: key of :data:`BACKGROUNDS`.
        bg_colors: base colours the background draws from (RGB in [0, 1]).
        palette: key of :data:`PALETTES` (colours of skin, hair, clothes, props).
        fill: key of :data:`FILLS` (how a body pixel gets its colour from the normal).
        ambient, gloss: shading: ambient share and specular highlight strength.
        cel_levels: quantise shading into this many bands (0: smooth).
        outline_px: outline width in pixels (0: none).
        outline_color: outline colour.
        wobble: amplitude of the hand-drawn edge wobble (in units of the limb radius).
        opacity: alpha of the figures over the background (translucent washes < 1).
        light: light direction (x right, y down, z towards the camera).
        effects: ``(key of EFFECTS, strength)`` applied to the whole image in order.
        ink: ink / graphite / silhouette colour for the fills that use one.
        pose: pose statistics.
        n_figures: (min, max) annotated figures per image.
        size: (min, max) body height as a fraction of the image height.
        occluder_prob: probability of occluder objects in an image.
        crowd_prob: probability of a distant crowd (an ``iscrowd`` region).
        unlabelled_prob: probability that an annotator leaves a joint inside the image unlabelled.
    """

    name: str
    background: str
    bg_colors: tuple[RGB, ...]
    palette: str
    fill: str
    ambient: float = 0.45
    gloss: float = 0.0
    cel_levels: int = 0
    outline_px: float = 0.0
    outline_color: RGB = (0.05, 0.05, 0.05)
    wobble: float = 0.0
    opacity: float = 1.0
    light: tuple[float, float, float] = (-0.45, -0.55, 0.7)
    effects: tuple[tuple[str, float], ...] = ()
    ink: RGB = (0.08, 0.08, 0.1)
    pose: PoseStats = field(default_factory=PoseStats)
    n_figures: tuple[int, int] = (1, 3)
    size: tuple[float, float] = (0.4, 0.9)
    occluder_prob: float = 0.3
    crowd_prob: float = 0.0
    unlabelled_prob: float = 0.02


_PHOTO_BG = ((0.55, 0.5, 0.45), (0.35, 0.4, 0.32), (0.6, 0.62, 0.66), (0.42, 0.36, 0.3), (0.5, 0.56, 0.6))
_PAPER = ((0.95, 0.93, 0.87),)

STYLES: dict[str, Style] = {}


def _register(style: Style) -> Style:
    STYLES[style.name] = style
    return style


# COCO: everyday photos, people of all sizes, clutter, occluders and sometimes a crowd.
_register(Style("photo", "photo", _PHOTO_BG, "natural", "shaded", n_figures=(1, 4), size=(0.3, 0.9),
                occluder_prob=0.4, crowd_prob=0.12, effects=(("noise", 0.035), ("blur", 0.6))))  # fmt: skip

# real_human: photographs too, each with its own light, clothes and poses.
_register(Style("acrobatics", "studio", ((0.2, 0.45, 0.8), (0.85, 0.85, 0.9)), "costume", "shaded",
                pose=PoseStats(lean=0.6, invert_prob=0.3, arm_spread=2.8, leg_spread=0.9, knee_bend=1.6),
                effects=(("noise", 0.03), ("blur", 0.5))))  # fmt: skip
_register(Style("cosplay", "photo", ((0.3, 0.3, 0.38), (0.5, 0.45, 0.55)), "costume", "shaded", gloss=0.15,
                effects=(("noise", 0.025), ("saturate", 1.4), ("blur", 0.5))))  # fmt: skip
_register(Style("dance", "stage", ((0.05, 0.03, 0.1), (0.9, 0.4, 0.8)), "stage", "shaded", ambient=0.25,
                pose=PoseStats(lean=0.35, arm_spread=2.6, leg_spread=0.7, knee_bend=1.4),
                effects=(("noise", 0.04), ("blur", 0.7))))  # fmt: skip
_register(Style("drama", "stage", ((0.08, 0.05, 0.03), (1.0, 0.75, 0.45)), "natural", "shaded", ambient=0.3,
                effects=(("grade", 1.0), ("vignette", 0.6), ("noise", 0.03))))  # fmt: skip
_register(Style("movie", "photo", ((0.25, 0.3, 0.35), (0.4, 0.35, 0.3)), "natural", "shaded",
                effects=(("teal_orange", 1.0), ("vignette", 0.4), ("noise", 0.02), ("blur", 0.8))))  # fmt: skip

# 3D_virtual_human: objects shaped like people — stone, plaster, glossy plastic.
_register(Style("garage_kits", "studio", ((0.9, 0.9, 0.92), (0.7, 0.72, 0.78)), "plastic", "shaded",
                ambient=0.35, gloss=0.6, size=(0.5, 0.9), effects=(("blur", 0.4),)))  # fmt: skip
_register(Style("relief", "slab", ((0.62, 0.58, 0.5),), "relief", "shaded", ambient=0.2,
                light=(-0.8, -0.5, 0.35), occluder_prob=0.0, effects=(("grain", 0.06),)))  # fmt: skip
_register(Style("sculpture", "studio", ((0.22, 0.22, 0.25), (0.45, 0.45, 0.48)), "stone", "shaded",
                ambient=0.15, gloss=0.1, light=(-0.7, -0.6, 0.4), size=(0.5, 0.95),
                effects=(("grain", 0.03),)))  # fmt: skip

# 2D_virtual_human: depictions, each medium its own way of making marks.
_register(Style("cartoon", "gradient", ((0.55, 0.8, 1.0), (0.7, 0.95, 0.7)), "cartoon", "shaded",
                cel_levels=2, ambient=0.7, outline_px=2.0, effects=(("posterize", 6),)))  # fmt: skip
_register(Style("digital_art", "gradient", ((0.15, 0.05, 0.35), (0.9, 0.3, 0.5), (0.1, 0.5, 0.8)), "digital",
                "shaded", ambient=0.4, gloss=0.35, effects=(("bloom", 0.5),)))  # fmt: skip
_register(Style("ink_painting", "paper", ((0.93, 0.9, 0.82),), "ink", "wash", wobble=0.15, outline_px=1.5,
                outline_color=(0.05, 0.05, 0.05), ink=(0.08, 0.08, 0.08),
                effects=(("blur", 0.9), ("grain", 0.05))))  # fmt: skip
_register(Style("kids_drawing", "paper", ((1.0, 1.0, 1.0),), "primary", "flat", wobble=0.35, outline_px=2.5,
                outline_color=(0.1, 0.1, 0.3), pose=PoseStats(lean=0.05, back_prob=0.0, arm_spread=1.2),
                effects=(("crayon", 0.25),)))  # fmt: skip
_register(Style("mural", "wall", ((0.78, 0.68, 0.52), (0.7, 0.55, 0.42)), "earth", "flat", outline_px=1.5,
                outline_color=(0.3, 0.18, 0.1), effects=(("fade", 0.35), ("grain", 0.08))))  # fmt: skip
_register(Style("oil_painting", "photo", ((0.4, 0.32, 0.2), (0.2, 0.25, 0.3)), "oil", "shaded", ambient=0.35,
                effects=(("brush", 0.12), ("posterize", 12), ("blur", 0.6))))  # fmt: skip
_register(Style("shadow_play", "screen", ((1.0, 0.82, 0.5),), "ink", "silhouette", wobble=0.05,
                ink=(0.12, 0.06, 0.03), occluder_prob=0.0, pose=PoseStats(back_prob=0.0, lean=0.2),
                effects=(("blur", 0.8), ("vignette", 0.5))))  # fmt: skip
_register(Style("sketch", "paper", _PAPER, "graphite", "hatch", outline_px=1.2, wobble=0.08,
                outline_color=(0.25, 0.25, 0.25), ink=(0.3, 0.3, 0.32), effects=(("grain", 0.04),)))  # fmt: skip
_register(Style("stained_glass", "voronoi", ((0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.9, 0.75, 0.1),
                (0.1, 0.6, 0.3), (0.5, 0.1, 0.6)), "glass", "flat", outline_px=2.5,
                outline_color=(0.04, 0.04, 0.04), effects=(("mosaic", 1.0), ("bloom", 0.3))))  # fmt: skip
_register(Style("ukiyoe", "bands", ((0.92, 0.86, 0.7), (0.2, 0.35, 0.55), (0.85, 0.8, 0.65)), "ukiyoe", "flat",
                outline_px=1.5, outline_color=(0.1, 0.08, 0.06),
                effects=(("posterize", 12), ("grain", 0.05))))  # fmt: skip
_register(Style("watercolor", "paper", ((0.98, 0.97, 0.94),), "pastel", "flat", opacity=0.7, wobble=0.2,
                effects=(("bleed", 1.0), ("grain", 0.04))))  # fmt: skip
_register(Style("generated_image", "gradient", ((0.95, 0.7, 0.5), (0.5, 0.6, 0.95)), "digital", "shaded",
                ambient=0.5, gloss=0.25, effects=(("blur", 1.0), ("saturate", 1.3))))  # fmt: skip

assert set(STYLES) == {COCO_SCENE, *HUMANART_SCENES}, "every domain needs exactly one style"


def style_for(domain: str) -> Style:
    """The :class:`Style` of a domain.

    Args:
        domain: ``photo`` (COCO) or a HumanArt scene.

    Returns:
        The style.

    Raises:
        ValueError: for an unknown domain (the message lists the valid ones).
    """
    try:
        return STYLES[domain]
    except KeyError:
        raise ValueError(f"unknown domain {domain!r}; valid: {', '.join(STYLES)}") from None


# --------------------------------------------------------------------------------------------
# Palettes: colours of one figure (skin, clothes, hair) and of the props
# --------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _pick(rng: np.random.Generator, colours) -> np.ndarray:
    return np.asarray(colours[int(rng.integers(len(colours)))], dtype=np.float32)


_SKIN_TONES = ((0.96, 0.8, 0.69), (0.87, 0.67, 0.52), (0.72, 0.52, 0.38), (0.5, 0.34, 0.24), (0.35, 0.24, 0.17))
_HAIR = ((0.1, 0.07, 0.05), (0.3, 0.2, 0.1), (0.55, 0.4, 0.2), (0.8, 0.7, 0.45), (0.5, 0.5, 0.5))


def _palette_natural(rng):
    clothes = rng.uniform(0.1, 0.8, (3, 3)).astype(np.float32) * rng.uniform(0.5, 1.0, (3, 1)).astype(np.float32)
    top = clothes[0]
    return {SKIN: _jitter(rng, _pick(rng, _SKIN_TONES), 0.03), HAIR: _pick(rng, _HAIR), TOP: top,
            FOREARM: top if rng.random() < 0.6 else _pick(rng, _SKIN_TONES), BOTTOM: clothes[1],
            SHOES: clothes[2] * 0.5, "prop": rng.uniform(0.2, 0.7, 3).astype(np.float32)}  # fmt: skip


def _saturated(rng, n):
    hue = rng.uniform(0, 1, n)
    return np.stack([_hsv(h, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)) for h in hue]).astype(np.float32)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _palette_costume(rng):
    c = _saturated(rng, 4)
    return {SKIN: _jitter(rng, _pick(rng, _SKIN_TONES), 0.03), HAIR: c[3], TOP: c[0], FOREARM: c[0], BOTTOM: c[1],
            SHOES: c[2], "prop": c[2]}  # fmt: skip


def _palette_stage(rng):
    p = _palette_natural(rng)
    p[TOP], p[BOTTOM] = p[TOP] * 0.4 + 0.5 * _saturated(rng, 1)[0], p[BOTTOM] * 0.3
    return p


def _monochrome(base, rng, spread: float):
    base = _jitter(rng, base, 0.04)
    return {k: np.clip(base * rng.uniform(1 - spread, 1 + spread), 0, 1).astype(np.float32)
            for k in (SKIN, HAIR, TOP, FOREARM, BOTTOM, SHOES, "prop")}  # fmt: skip


def _palette_stone(rng):
    return _monochrome(_pick(rng, ((0.92, 0.9, 0.86), (0.75, 0.72, 0.68), (0.55, 0.42, 0.28))), rng, 0.03)


def _palette_relief(rng):
    return _monochrome(np.array([0.8, 0.76, 0.67]), rng, 0.02)


def _palette_plastic(rng):
    return _palette_costume(rng)


def _palette_cartoon(rng):
    c = _saturated(rng, 3)
    return {SKIN: _pick(rng, ((1.0, 0.85, 0.72), (0.95, 0.75, 0.6))), HAIR: _pick(rng, ((0.1, 0.1, 0.1), (0.95, 0.8, 0.2),
            (0.9, 0.4, 0.1))), TOP: c[0], FOREARM: c[0], BOTTOM: c[1], SHOES: c[2] * 0.6, "prop": c[2]}  # fmt: skip


def _palette_digital(rng):
    c = _saturated(rng, 4)
    return {SKIN: _jitter(rng, (0.98, 0.82, 0.75), 0.03), HAIR: c[3] * 0.7, TOP: c[0], FOREARM: c[0],
            BOTTOM: c[1] * 0.8, SHOES: c[2] * 0.5, "prop": c[2]}  # fmt: skip


def _palette_ink(rng):
    return _monochrome(np.array([0.12, 0.12, 0.12]), rng, 0.1)


def _palette_primary(rng):
    prim = ((0.9, 0.1, 0.1), (0.1, 0.3, 0.9), (1.0, 0.85, 0.0), (0.1, 0.7, 0.2), (1.0, 0.5, 0.0), (0.6, 0.2, 0.8))
    return {SKIN: np.array([1.0, 0.8, 0.6], np.float32), HAIR: _pick(rng, ((0.4, 0.2, 0.05), (0.05, 0.05, 0.05))),
            TOP: _pick(rng, prim), FOREARM: _pick(rng, prim), BOTTOM: _pick(rng, prim), SHOES: _pick(rng, prim),
            "prop": _pick(rng, prim)}  # fmt: skip


def _palette_earth(rng):
    earth = ((0.65, 0.3, 0.15), (0.75, 0.55, 0.25), (0.35, 0.3, 0.25), (0.55, 0.2, 0.12), (0.3, 0.4, 0.35))
    return {SKIN: _jitter(rng, (0.7, 0.45, 0.3), 0.04), HAIR: np.array([0.15, 0.1, 0.07], np.float32),
            TOP: _pick(rng, earth), FOREARM: _pick(rng, earth), BOTTOM: _pick(rng, earth), SHOES: _pick(rng, earth) * 0.6,
            "prop": _pick(rng, earth)}  # fmt: skip


def _palette_oil(rng):
    p = _palette_natural(rng)
    return {k: np.clip(v * np.array([1.05, 0.95, 0.75]), 0, 1).astype(np.float32) for k, v in p.items()}


def _palette_graphite(rng):
    return _monochrome(np.array([0.55, 0.55, 0.57]), rng, 0.15)


def _palette_glass(rng):
    c = _saturated(rng, 5)
    return {SKIN: _jitter(rng, (0.95, 0.85, 0.6), 0.03), HAIR: c[4], TOP: c[0], FOREARM: c[1], BOTTOM: c[2], SHOES: c[3],
            "prop": c[4]}  # fmt: skip


def _palette_ukiyoe(rng):
    ink = ((0.12, 0.2, 0.4), (0.75, 0.22, 0.15), (0.8, 0.65, 0.35), (0.25, 0.35, 0.3), (0.55, 0.15, 0.25))
    return {SKIN: np.array([0.97, 0.92, 0.82], np.float32), HAIR: np.array([0.06, 0.05, 0.05], np.float32),
            TOP: _pick(rng, ink), FOREARM: _pick(rng, ink), BOTTOM: _pick(rng, ink), SHOES: np.array([0.2, 0.15, 0.1], np.float32),
            "prop": _pick(rng, ink)}  # fmt: skip


def _palette_pastel(rng):
    c = _saturated(rng, 4) * 0.5 + 0.45
    return {SKIN: np.array([1.0, 0.86, 0.78], np.float32), HAIR: c[3] * 0.7, TOP: c[0], FOREARM: c[0], BOTTOM: c[1],
            SHOES: c[2], "prop": c[2]}  # fmt: skip


PALETTES: dict[str, Callable[[np.random.Generator], dict]] = {
    "natural": _palette_natural, "costume": _palette_costume, "stage": _palette_stage, "stone": _palette_stone,
    "relief": _palette_relief, "plastic": _palette_plastic, "cartoon": _palette_cartoon, "digital": _palette_digital,
    "ink": _palette_ink, "primary": _palette_primary, "earth": _palette_earth, "oil": _palette_oil,
    "graphite": _palette_graphite, "glass": _palette_glass, "ukiyoe": _palette_ukiyoe, "pastel": _palette_pastel,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Noise helpers
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 1) -> np.ndarray:
    """Value noise in [-1, 1] with features about ``cell`` pixels wide (bicubic upsampling in PIL)."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.integers(0, 256, (gh, gw, channels), dtype=np.uint8)
    mode_grid = grid[..., 0] if channels == 1 else grid
    img = Image.fromarray(mode_grid).resize((w, h), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float32) * (2.0 / 255.0) - 1.0
    return out if channels > 1 else out[..., None]


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a float [0, 1] RGB image through PIL (fast C code)."""
    u8 = Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(u8.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _vertical_gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to(np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t, (h, w, 3)).copy()


def _voronoi_ids(rng: np.random.Generator, h: int, w: int, n_cells: int) -> np.ndarray:
    """Cell index per pixel of a random Voronoi tessellation (computed at 1/4 resolution)."""
    sh, sw = max(1, h // 4), max(1, w // 4)
    seeds = rng.uniform(0, 1, (n_cells, 2)) * np.array([sw, sh])
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    d = (xs[None] - seeds[:, 0, None, None]) ** 2 + (ys[None] - seeds[:, 1, None, None]) ** 2
    ids = np.argmin(d, axis=0).astype(np.uint8)
    return np.asarray(Image.fromarray(ids).resize((w, h), Image.NEAREST), dtype=np.int32)


def _boundaries(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    return edge


# --------------------------------------------------------------------------------------------
# Backgrounds: (rng, h, w, style, ctx) -> float32 (h, w, 3) in [0, 1]
# --------------------------------------------------------------------------------------------


def _bg_photo(rng, h, w, style, ctx):
    wall, floor = _jitter(rng, _pick(rng, style.bg_colors), 0.08), _jitter(rng, _pick(rng, style.bg_colors), 0.08) * 0.8
    horizon = int(h * rng.uniform(0.45, 0.8))
    img = np.empty((h, w, 3), np.float32)
    img[:horizon], img[horizon:] = wall, floor
    # Furniture, windows, doors: soft-edged boxes that give the clutter of real photos.
    canvas = Image.fromarray((img * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.8) * h
        x1, y1 = x0 + rng.uniform(0.1, 0.5) * w, y0 + rng.uniform(0.1, 0.5) * h
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(c) for c in rng.integers(20, 235, 3)))
    img = np.asarray(canvas, np.float32) / 255.0
    img = _blur(img, 1.2)
    img *= 1.0 + 0.18 * _smooth_noise(rng, h, w, 28) + 0.06 * _smooth_noise(rng, h, w, 3)
    img *= np.linspace(1.1, 0.8, h, dtype=np.float32)[:, None, None]  # light from above
    return img


def _bg_stage(rng, h, w, style, ctx):
    dark, spot = np.asarray(style.bg_colors[0], np.float32), _jitter(rng, style.bg_colors[-1], 0.1)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.broadcast_to(dark, (h, w, 3)).copy()
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, rad = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.9) * h, rng.uniform(0.3, 0.6) * max(h, w)
        fall = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (rad / 2) ** 2))[..., None]
        img += spot * 0.7 * fall
    img *= 1.0 + 0.08 * _smooth_noise(rng, h, w, 16)
    return img


def _bg_studio(rng, h, w, style, ctx):
    top, bottom = _jitter(rng, style.bg_colors[0], 0.05), _jitter(rng, style.bg_colors[-1], 0.05)
    return _vertical_gradient(h, w, top, bottom) * (1.0 + 0.02 * _smooth_noise(rng, h, w, 40))


def _bg_paper(rng, h, w, style, ctx):
    img = np.broadcast_to(_jitter(rng, style.bg_colors[0], 0.02), (h, w, 3)).copy()
    img *= 1.0 - 0.04 * np.abs(_smooth_noise(rng, h, w, 50))  # faint stains
    return img


def _bg_wall(rng, h, w, style, ctx):
    img = np.broadcast_to(_jitter(rng, _pick(rng, style.bg_colors), 0.05), (h, w, 3)).copy()
    img *= 1.0 + 0.12 * _smooth_noise(rng, h, w, 20) + 0.05 * _smooth_noise(rng, h, w, 4)
    canvas = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):  # cracks in the plaster
        pts = np.cumsum(rng.normal(0, 12, (6, 2)), axis=0) + rng.uniform(0, 1, 2) * (w, h)
        draw.line([tuple(p) for p in pts], fill=(70, 55, 40), width=1)
    return np.asarray(canvas, np.float32) / 255.0


def _bg_voronoi(rng, h, w, style, ctx):
    ids = _voronoi_ids(rng, h, w, int(rng.integers(25, 45)))
    colours = np.stack([_jitter(rng, _pick(rng, style.bg_colors), 0.15) for _ in range(int(ids.max()) + 1)])
    img = colours[ids] * (1.0 + 0.1 * _smooth_noise(rng, h, w, 10))
    img[_boundaries(ids)] = 0.04  # the lead came between the panes
    ctx["cells"] = ids
    return img


def _bg_screen(rng, h, w, style, ctx):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xs - w / 2) / w) ** 2 + ((ys - h / 2) / h) ** 2
    glow = np.exp(-r2 * 3.0)[..., None]
    base = _jitter(rng, style.bg_colors[0], 0.05)
    return base * (0.55 + 0.5 * glow) * (1.0 + 0.04 * _smooth_noise(rng, h, w, 30))


def _bg_slab(rng, h, w, style, ctx):
    img = np.broadcast_to(_jitter(rng, style.bg_colors[0], 0.03), (h, w, 3)).copy()
    return img * (1.0 + 0.06 * _smooth_noise(rng, h, w, 24) + 0.05 * _smooth_noise(rng, h, w, 2))


def _bg_gradient(rng, h, w, style, ctx):
    a, b = _jitter(rng, _pick(rng, style.bg_colors), 0.1), _jitter(rng, _pick(rng, style.bg_colors), 0.1)
    ang = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(ang) * xs / w + np.sin(ang) * ys / h
    t = ((t - t.min()) / max(float(np.ptp(t)), 1e-6))[..., None]
    img = a * (1 - t) + b * t
    for _ in range(int(rng.integers(3, 8))):  # soft bokeh discs
        cx, cy, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.2) * w
        disc = np.clip(1.0 - np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / rad, 0, 1)[..., None]
        img = img + 0.25 * disc
    return img


def _bg_bands(rng, h, w, style, ctx):
    sky, sea, paper = (np.asarray(c, np.float32) for c in style.bg_colors)
    img = np.broadcast_to(paper, (h, w, 3)).copy()
    y_sea = int(h * rng.uniform(0.55, 0.8))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img[: int(h * 0.25)] = sky
    wave = np.sin(xs / rng.uniform(6, 12) + ys / 3.0) > 0.6
    sea_rows = ys >= y_sea
    img[sea_rows] = sea
    img[sea_rows & wave] = paper  # white wave crests, printed flat
    return img


BACKGROUNDS: dict[str, Callable] = {
    "photo": _bg_photo, "stage": _bg_stage, "studio": _bg_studio, "paper": _bg_paper, "wall": _bg_wall,
    "voronoi": _bg_voronoi, "screen": _bg_screen, "slab": _bg_slab, "gradient": _bg_gradient, "bands": _bg_bands,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Skeleton
# --------------------------------------------------------------------------------------------


def _rot(v: np.ndarray, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


@dataclass
class Skeleton:
    """A posed figure: joints and the capsules that draw it.

    Attributes:
        joints: (21, 2) float image coordinates in HumanArt order (COCO first).
        parts: (P, 5) capsules ``ax, ay, bx, by, radius``.
        groups: (P,) colour group of each part.
        head: index of the head part (hair is painted inside it).
        head_up: unit vector of the head's up direction (image coordinates).
        facing_back: the figure shows its back (the head is all hair).
    """

    joints: np.ndarray
    parts: np.ndarray
    groups: np.ndarray
    head: int
    head_up: np.ndarray
    facing_back: bool


def sample_skeleton(rng: np.random.Generator, height: float, hip: tuple[float, float], pose: PoseStats) -> Skeleton:
    """Sample a posed 2.5D figure.

    Args:
        rng: the random generator.
        height: body height in pixels (head top to soles when upright).
        hip: image position of the hip centre.
        pose: the domain's pose statistics.

    Returns:
        The :class:`Skeleton`; joint coordinates are rounded to :data:`KEYPOINT_DECIMALS` so that
        the figure is drawn from exactly the values written to the annotation file.
    """
    H = float(height) * rng.uniform(0.93, 1.07)
    lean = rng.normal(0.0, pose.lean) + (np.pi if rng.random() < pose.invert_prob else 0.0)
    up = np.array([np.sin(lean), -np.cos(lean)])
    right = np.array([-up[1], up[0]])
    down = -up
    # Facing angle about the vertical axis: 0 faces the camera (the person's left on the image's
    # right), ±pi/2 is a profile, pi shows the back.
    phi = rng.normal(0.0, 0.6) + (np.pi if rng.random() < pose.back_prob else 0.0)
    c, s = np.cos(phi), np.sin(phi)

    mid_hip = np.asarray(hip, dtype=np.float64)
    mid_sh = mid_hip + up * 0.3 * H
    sh_half, hip_half = 0.11 * H, 0.075 * H
    l_sh, r_sh = mid_sh + right * sh_half * c, mid_sh - right * sh_half * c
    l_hip, r_hip = mid_hip + right * hip_half * c, mid_hip - right * hip_half * c

    head_r = 0.065 * H
    head_up = _rot(up, rng.normal(0.0, 0.2))
    head_right = np.array([-head_up[1], head_up[0]])
    head_c = mid_sh + up * 0.05 * H + head_up * head_r * 1.05

    def face(alpha: float, vert: float) -> np.ndarray:
        # A feature at angle alpha round the head: its horizontal offset is sin(alpha + phi).
        return head_c + head_right * 0.85 * head_r * np.sin(alpha + phi) + head_up * vert * head_r

    joints = np.zeros((NUM_HUMANART_KEYPOINTS, 2))
    joints[NOSE] = face(0.0, -0.15)
    joints[L_EYE], joints[R_EYE] = face(0.5, 0.15), face(-0.5, 0.15)
    joints[L_EAR], joints[R_EAR] = face(1.45, 0.05), face(-1.45, 0.05)
    joints[L_SH], joints[R_SH], joints[L_HIP], joints[R_HIP] = l_sh, r_sh, l_hip, r_hip

    for side, sh, el, wr, fi in ((1, l_sh, L_EL, L_WR, L_FI), (-1, r_sh, R_EL, R_WR, R_FI)):
        # side*c: where this arm's side of the body is in the image (right when +).
        out = side * (1.0 if c >= 0 else -1.0)
        # Swing away from the body (mostly), sometimes across it.
        d_ua = _rot(down, -out * (0.2 + rng.uniform(-0.35, 1.0) * pose.arm_spread))
        joints[el] = sh + d_ua * 0.17 * H * rng.uniform(0.55, 1.0)
        d_fa = _rot(d_ua, rng.uniform(-pose.elbow_bend, pose.elbow_bend))
        joints[wr] = joints[el] + d_fa * 0.15 * H * rng.uniform(0.55, 1.0)
        joints[fi] = joints[wr] + _rot(d_fa, rng.normal(0.0, 0.3)) * 0.075 * H

    fwd = right * (np.sign(s) if abs(s) > 1e-6 else 1.0)
    for side, hp, kn, an, to in ((1, l_hip, L_KN, L_AN, L_TO), (-1, r_hip, R_KN, R_AN, R_TO)):
        out = side * (1.0 if c >= 0 else -1.0)
        d_th = _rot(down, -out * 0.08 + rng.normal(0.0, pose.leg_spread))
        joints[kn] = hp + d_th * 0.24 * H * rng.uniform(0.7, 1.0)
        # Knees bend backwards: away from where the figure faces (visible in profile).
        bend = rng.uniform(0.0, pose.knee_bend) * (float(np.sign(s)) if abs(s) > 0.3 else 0.3 * out)
        d_sh = _rot(d_th, bend)
        joints[an] = joints[kn] + d_sh * 0.24 * H * rng.uniform(0.7, 1.0)
        foot = fwd * abs(s) * 0.9 + d_sh * 0.45
        joints[to] = joints[an] + foot / np.linalg.norm(foot) * 0.07 * H * max(abs(s), 0.45)

    joints = np.round(joints, KEYPOINT_DECIMALS)
    J = joints
    mid_sh_r, mid_hip_r = (J[L_SH] + J[R_SH]) / 2, (J[L_HIP] + J[R_HIP]) / 2
    torso_r = 0.075 * H + 0.035 * H * abs(c)
    specs = [
        (mid_sh_r, mid_hip_r, torso_r, TOP),
        (J[L_SH], J[R_SH], 0.045 * H, TOP),
        (J[L_HIP], J[R_HIP], 0.062 * H, BOTTOM),
        (mid_sh_r, head_c, 0.032 * H, SKIN),
        (head_c, head_c, head_r, SKIN),
    ]
    head_index = len(specs) - 1
    for a, b, r, g in (
        (L_SH, L_EL, 0.036, TOP), (L_EL, L_WR, 0.03, FOREARM), (L_WR, L_FI, 0.022, SKIN),
        (R_SH, R_EL, 0.036, TOP), (R_EL, R_WR, 0.03, FOREARM), (R_WR, R_FI, 0.022, SKIN),
        (L_HIP, L_KN, 0.052, BOTTOM), (L_KN, L_AN, 0.042, BOTTOM), (L_AN, L_TO, 0.026, SHOES),
        (R_HIP, R_KN, 0.052, BOTTOM), (R_KN, R_AN, 0.042, BOTTOM), (R_AN, R_TO, 0.026, SHOES),
    ):  # fmt: skip
        specs.append((J[a], J[b], r * H, g))
    parts = np.array([[a[0], a[1], b[0], b[1], r] for a, b, r, _ in specs])
    groups = np.array([g for *_, g in specs])
    return Skeleton(joints, parts, groups, head_index, head_up, facing_back=bool(c < -0.2))


# --------------------------------------------------------------------------------------------
# Distance field of capsules
# --------------------------------------------------------------------------------------------


@dataclass
class _Field:
    """Per-pixel result of rasterising capsules over a window ``[y0:y1, x0:x1]``."""

    y0: int
    x0: int
    dn: np.ndarray  # distance to the nearest capsule surface, in units of its radius (<= 1 inside)
    part: np.ndarray  # index of that capsule
    vx: np.ndarray  # offset from the capsule's axis, in units of its radius (gives the normal)
    vy: np.ndarray
    radius: np.ndarray


def _capsule_field(parts: np.ndarray, h: int, w: int, pad: float = 1.0) -> _Field | None:
    """Rasterise capsules ``(ax, ay, bx, by, r)`` within the image; ``None`` when all are outside."""
    x_lo = np.minimum(parts[:, 0], parts[:, 2]) - parts[:, 4] - pad
    x_hi = np.maximum(parts[:, 0], parts[:, 2]) + parts[:, 4] + pad
    y_lo = np.minimum(parts[:, 1], parts[:, 3]) - parts[:, 4] - pad
    y_hi = np.maximum(parts[:, 1], parts[:, 3]) + parts[:, 4] + pad
    X0, X1 = max(0, int(np.floor(x_lo.min()))), min(w, int(np.ceil(x_hi.max())))
    Y0, Y1 = max(0, int(np.floor(y_lo.min()))), min(h, int(np.ceil(y_hi.max())))
    if X1 <= X0 or Y1 <= Y0:
        return None
    shape = (Y1 - Y0, X1 - X0)
    dn = np.full(shape, np.inf, np.float32)
    part = np.full(shape, -1, np.int16)
    vx, vy, rad = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.ones(shape, np.float32)
    for i, (ax, ay, bx, by, r) in enumerate(parts):
        # Each capsule only touches its own small box: keeps the work ~ the figure's area.
        x0, x1 = max(X0, int(np.floor(x_lo[i]))), min(X1, int(np.ceil(x_hi[i])))
        y0, y1 = max(Y0, int(np.floor(y_lo[i]))), min(Y1, int(np.ceil(y_hi[i])))
        if x1 <= x0 or y1 <= y0:
            continue
        px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5  # pixel centres
        py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        abx, aby = bx - ax, by - ay
        l2 = abx * abx + aby * aby
        t = np.clip(((px - ax) * abx + (py - ay) * aby) / l2, 0.0, 1.0) if l2 > 1e-9 else np.zeros((1, 1), np.float32)
        ox, oy = (px - ax - t * abx) / r, (py - ay - t * aby) / r
        n = np.sqrt(ox * ox + oy * oy)
        sl = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
        better = n < dn[sl]
        dn[sl] = np.where(better, n, dn[sl])
        part[sl] = np.where(better, i, part[sl])
        vx[sl] = np.where(better, ox, vx[sl])
        vy[sl] = np.where(better, oy, vy[sl])
        rad[sl] = np.where(better, r, rad[sl])
    return _Field(Y0, X0, dn, part, vx, vy, rad)


# --------------------------------------------------------------------------------------------
# Fills: how a body pixel gets its colour.  (base, nx, ny, nz, dn, px, py, style) -> (N, 3)
# --------------------------------------------------------------------------------------------


def _lambert(nx, ny, nz, style: Style) -> np.ndarray:
    lx, ly, lz = np.asarray(style.light) / np.linalg.norm(style.light)
    return np.clip(nx * lx + ny * ly + nz * lz, 0.0, 1.0)


def _fill_shaded(base, nx, ny, nz, dn, px, py, style):
    lam = _lambert(nx, ny, nz, style)
    shade = style.ambient + (1.0 - style.ambient) * lam
    if style.cel_levels:
        shade = np.where(lam > 0.35, 1.0, style.ambient + 0.1)  # cartoon: one light, one shadow band
    rgb = base * shade[:, None]
    if style.gloss:
        rgb = rgb + style.gloss * (lam**24)[:, None]
    return rgb


def _fill_flat(base, nx, ny, nz, dn, px, py, style):
    return base


def _fill_silhouette(base, nx, ny, nz, dn, px, py, style):
    return np.broadcast_to(np.asarray(style.ink, np.float32), base.shape) * (1.0 + 0.2 * dn[:, None])


def _fill_wash(base, nx, ny, nz, dn, px, py, style):
    # Ink wash: pigment pools towards the contour, the middle of a stroke stays pale.
    paper = np.asarray(style.bg_colors[0], np.float32)
    density = (0.25 + 0.55 * dn**2)[:, None] * (1.0 - base.mean(axis=1, keepdims=True) * 0.5)
    return paper * (1.0 - density) + np.asarray(style.ink, np.float32) * density


def _fill_hatch(base, nx, ny, nz, dn, px, py, style):
    # Pencil on paper: hatching where the form turns from the light, denser in deep shadow.
    paper = np.asarray(style.bg_colors[0], np.float32)
    lam = _lambert(nx, ny, nz, style)
    diag = (px + py) % 4.0 < 1.0
    cross = (px - py) % 4.0 < 1.0
    mark = (diag & (lam < 0.75)) | (cross & (lam < 0.4))
    # A light graphite rub over the whole figure, so it reads as a form and not as bare paper.
    tone = paper * 0.82 + 0.18 * (0.5 * base + 0.5 * np.asarray(style.ink, np.float32))
    return np.where(mark[:, None], np.asarray(style.ink, np.float32), tone)


FILLS: dict[str, Callable] = {
    "shaded": _fill_shaded, "flat": _fill_flat, "silhouette": _fill_silhouette, "wash": _fill_wash, "hatch": _fill_hatch,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Effects on the whole image: (img, owner, rng, strength, ctx) -> img
# --------------------------------------------------------------------------------------------


def _fx_noise(img, owner, rng, s, ctx):
    return img + rng.standard_normal(img.shape, dtype=np.float32) * s


def _fx_blur(img, owner, rng, s, ctx):
    return _blur(img, s)


def _fx_grain(img, owner, rng, s, ctx):
    h, w, _ = img.shape
    return img * (1.0 + s * _smooth_noise(rng, h, w, 1.5))


def _fx_vignette(img, owner, rng, s, ctx):
    h, w, _ = img.shape
    ys, xs = np.ogrid[0:h, 0:w]
    r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
    return img * (1.0 - s * 0.5 * r2.astype(np.float32))[..., None]


def _fx_grade(img, owner, rng, s, ctx):
    warm = np.array([1.12, 0.97, 0.78], np.float32)  # tungsten stage light
    return img * (1 - s + s * warm)


def _fx_teal_orange(img, owner, rng, s, ctx):
    lum = img.mean(axis=2, keepdims=True)
    graded = np.where(
        lum > 0.45, img * np.array([1.12, 0.98, 0.8], np.float32), img * np.array([0.8, 1.0, 1.12], np.float32)
    )
    return img * (1 - s) + graded * s


def _fx_saturate(img, owner, rng, s, ctx):
    lum = img.mean(axis=2, keepdims=True)
    return lum + (img - lum) * s


def _fx_posterize(img, owner, rng, s, ctx):
    levels = float(s)
    return np.round(np.clip(img, 0, 1) * (levels - 1)) / (levels - 1)


def _fx_bloom(img, owner, rng, s, ctx):
    bright = np.clip(img - 0.6, 0, 1)
    return img + s * _blur(bright, 4.0)


def _fx_brush(img, owner, rng, s, ctx):
    # Oil paint: elongated brush-stroke texture and a slight colour drift between strokes.
    h, w, _ = img.shape
    if rng.random() < 0.5:
        grid = rng.integers(0, 256, (max(2, h // 2), max(2, w // 14)), dtype=np.uint8)
    else:
        grid = rng.integers(0, 256, (max(2, h // 14), max(2, w // 2)), dtype=np.uint8)
    strokes = np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float32)[..., None] / 127.5 - 1.0
    drift = _smooth_noise(rng, h, w, 12, channels=3) * 0.05
    return img * (1.0 + s * strokes) + drift


def _fx_bleed(img, owner, rng, s, ctx):
    # Watercolour: pigment spreads (blur), collects at the edges of a wash (dark rims), and the
    # paper shows through (lighter overall).
    soft = _blur(img, 2.0)
    rim = np.abs(img - soft).sum(axis=2, keepdims=True)
    out = 0.55 * soft + 0.45 * img
    out = out * (1.0 - s * np.clip(rim * 1.5, 0, 0.35))
    return 1.0 - (1.0 - out) * 0.85


def _fx_crayon(img, owner, rng, s, ctx):
    # Wax crayon: colour only sticks to the ridges of the paper; streaky, with gaps.
    h, w, _ = img.shape
    ridges = _smooth_noise(rng, h, w, 1.2)
    paper = np.ones_like(img)
    on = owner[..., None] >= 0
    mixed = img + (paper - img) * np.clip(ridges * s * 1.5, 0, 0.5)
    return np.where(on, mixed, img)


def _fx_fade(img, owner, rng, s, ctx):
    # Old murals: pigment worn away in patches, colours chalky.
    h, w, _ = img.shape
    wear = np.clip(_smooth_noise(rng, h, w, 14), 0, 1)
    chalk = np.array([0.85, 0.8, 0.7], np.float32)
    return img + (chalk - img) * (s * (0.4 + wear))


def _fx_mosaic(img, owner, rng, s, ctx):
    # Stained glass: each pane inside a figure is one flat colour (its mean over that pane).
    ids = ctx.get("cells")
    if ids is None:
        return img
    fig = owner >= 0
    if not fig.any():
        return img
    key = ids * (int(owner.max()) + 2) + np.where(fig, owner + 1, 0)
    k = key[fig]
    uniq, inv = np.unique(k, return_inverse=True)
    cnt = np.bincount(inv).astype(np.float32)
    pix = img[fig]
    means = np.stack([np.bincount(inv, pix[:, c]) / cnt for c in range(3)], axis=1)
    out = img.copy()
    out[fig] = pix * (1.0 - s) + means[inv] * s
    return out


EFFECTS: dict[str, Callable] = {
    "noise": _fx_noise, "blur": _fx_blur, "grain": _fx_grain, "vignette": _fx_vignette, "grade": _fx_grade,
    "teal_orange": _fx_teal_orange, "saturate": _fx_saturate, "posterize": _fx_posterize, "bloom": _fx_bloom,
    "brush": _fx_brush, "bleed": _fx_bleed, "crayon": _fx_crayon, "fade": _fx_fade, "mosaic": _fx_mosaic,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


@dataclass
class PersonGT:
    """Ground truth of one annotated person (or crowd region), exactly as written to the file.

    Attributes:
        keypoints: (21, 3) float ``[x, y, v]`` in HumanArt order; the first 17 rows are COCO's.
            ``v=0`` rows are ``[0, 0, 0]``.
        bbox: ``(x, y, w, h)`` of the visible pixels (pixel edges).
        area: number of visible pixels.
        iscrowd: 1 for a crowd region (keypoints all zero).
        segmentation: uncompressed COCO RLE ``{"counts": [...], "size": [h, w]}`` of the visible pixels.
        owner_code: its code in :attr:`SceneRender.owner` (the figure index, or ``CROWD``).
    """

    keypoints: np.ndarray
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: int
    segmentation: dict
    owner_code: int

    @property
    def keypoints17(self) -> np.ndarray:
        """(17, 3) COCO keypoints."""
        return self.keypoints[:NUM_COCO_KEYPOINTS]

    @property
    def num_keypoints(self) -> int:
        """Labelled (``v > 0``) COCO keypoints."""
        return int((self.keypoints[:NUM_COCO_KEYPOINTS, 2] > 0).sum())

    @property
    def num_keypoints_21(self) -> int:
        """Labelled (``v > 0``) HumanArt keypoints."""
        return int((self.keypoints[:, 2] > 0).sum())


@dataclass
class SceneRender:
    """A rendered image with its labels.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        persons: annotated figures (drawing order) then the crowd region, if any.
        owner: (H, W) int16: figure index, or -1 background, -2 occluder, -3 crowd.
        background: the same image without figures, occluders or crowd (same effects), when asked for.
    """

    image: np.ndarray
    persons: list[PersonGT]
    owner: np.ndarray
    background: np.ndarray | None = None


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a boolean mask (column-major runs, starting with a 0-run).

    Args:
        mask: (H, W) bool.

    Returns:
        ``{"counts": [int, ...], "size": [H, W]}`` as ``pycocotools.mask.frPyObjects`` reads it.
    """
    h, w = mask.shape
    flat = np.ascontiguousarray(mask.T).reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"counts": [int(c) for c in counts], "size": [int(h), int(w)]}


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _draw(canvas, owner, fld: _Field, colours: np.ndarray, code: int, style: Style, wobble_noise, hair=None):
    """Paint a rasterised field onto the canvas and claim its pixels in the owner map."""
    dn = fld.dn
    if wobble_noise is not None:
        # Hand-drawn edges only ever bulge outwards, so every joint stays on its own figure.
        noise = wobble_noise[fld.y0 : fld.y0 + dn.shape[0], fld.x0 : fld.x0 + dn.shape[1]]
        dn = dn - style.wobble * (noise + 1.0) * 0.5
    inside = dn <= 1.0
    if not inside.any():
        return
    ys, xs = np.nonzero(inside)
    k = fld.part[inside].astype(np.intp)
    vx, vy = fld.vx[inside], fld.vy[inside]
    nz = np.sqrt(np.clip(1.0 - vx * vx - vy * vy, 0.0, 1.0))
    base = colours[k]
    if hair is not None:  # hair: the top of the head, or all of it seen from behind
        head, head_up, back, hair_rgb = hair
        on_head = k == head
        above = vx * head_up[0] + vy * head_up[1]  # (pixel - head centre) / r along the head's up
        is_hair = on_head & ((above > 0.25) | back)
        base = np.where(is_hair[:, None], hair_rgb, base)
    rgb = FILLS[style.fill](base, vx, vy, nz, dn[inside], xs + fld.x0 + 0.5, ys + fld.y0 + 0.5, style)
    if style.outline_px > 0:
        edge = dn[inside] * fld.radius[inside] > fld.radius[inside] - style.outline_px
        rgb = np.where(edge[:, None], np.asarray(style.outline_color, np.float32), rgb)
    gy, gx = ys + fld.y0, xs + fld.x0
    if style.opacity < 1.0:
        canvas[gy, gx] = canvas[gy, gx] * (1.0 - style.opacity) + rgb * style.opacity
    else:
        canvas[gy, gx] = rgb
    owner[gy, gx] = code


def _crowd_parts(rng: np.random.Generator, w: int, h: int) -> list[np.ndarray]:
    """Small far-away people as 3 capsules each (head, body, legs), packed in one region."""
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.3, 0.6) * h
    people = []
    for _ in range(int(rng.integers(8, 16))):
        H = rng.uniform(0.07, 0.12) * h
        x, y = cx + rng.normal(0, 0.08 * w), cy + rng.normal(0, 0.03 * h)
        people.append(np.array([
            [x, y - 0.85 * H, x, y - 0.85 * H, 0.09 * H],
            [x, y - 0.7 * H, x, y - 0.3 * H, 0.12 * H],
            [x, y - 0.3 * H, x + rng.normal(0, 0.05 * H), y + 0.1 * H, 0.1 * H],
        ]))  # fmt: skip
    return people


def render_scene(
    rng: np.random.Generator, width: int, height: int, style: Style, *, with_background: bool = False
) -> SceneRender:
    """Render one image of several posed figures in a domain's style, with its labels.

    Figures, occluders and the crowd get depths and are drawn far to near; labels come from the
    final owner map (see the module docstring for the visibility rules).

    Args:
        rng: the random generator (the image is a pure function of its state).
        width, height: image size in pixels.
        style: the domain's look (see :data:`STYLES`).
        with_background: also return the background alone, with the same effects applied (for
            tests that check the figures really are drawn where the joints are).

    Returns:
        A :class:`SceneRender`.
    """
    h, w = int(height), int(width)
    ctx: dict = {}
    background = BACKGROUNDS[style.background](rng, h, w, style, ctx).astype(np.float32)
    canvas = background.copy()
    owner = np.full((h, w), BACKGROUND, np.int16)
    wobble_noise = _smooth_noise(rng, h, w, 6)[..., 0] if style.wobble else None

    # Layers: (depth, kind, payload).  Bigger figures are nearer, as in a real perspective.
    layers: list[tuple[float, str, object]] = []
    skeletons: list[Skeleton] = []
    palettes: list[dict] = []
    n_fig = int(rng.integers(style.n_figures[0], style.n_figures[1] + 1))
    for i in range(n_fig):
        size = rng.uniform(*style.size) * h
        hip = (rng.uniform(0.05, 0.95) * w, rng.uniform(0.45, 0.85) * h)
        skel = sample_skeleton(rng, size, hip, style.pose)
        # No annotated limb thinner than 2 px: a joint must be able to hold its own pixel.
        skel.parts[:, 4] = np.maximum(skel.parts[:, 4], 2.0)
        skeletons.append(skel)
        palettes.append(PALETTES[style.palette](rng))
        layers.append((size / h + rng.normal(0, 0.1), "figure", i))
    if rng.random() < style.occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            if rng.random() < 0.5:  # a post or pillar
                x, r = rng.uniform(0, w), rng.uniform(0.03, 0.08) * w
                cap = np.array(
                    [[x, rng.uniform(-0.2, 0.4) * h, x + rng.normal(0, 0.05 * w), rng.uniform(0.7, 1.2) * h, r]]
                )
            else:  # a ball, bush or bag
                x, y, r = rng.uniform(0, w), rng.uniform(0.4, 1.0) * h, rng.uniform(0.06, 0.15) * h
                cap = np.array([[x, y, x, y, r]])
            layers.append((rng.uniform(0.2, 1.2), "occluder", cap))
    if rng.random() < style.crowd_prob:
        layers.append((-1.0, "crowd", _crowd_parts(rng, w, h)))  # far behind everyone

    for _depth, kind, payload in sorted(layers, key=lambda t: t[0]):
        if kind == "figure":
            skel, pal = skeletons[payload], palettes[payload]
            fld = _capsule_field(skel.parts, h, w)
            if fld is None:
                continue
            colours = np.stack([pal[g] for g in skel.groups]).astype(np.float32)
            hair = (skel.head, skel.head_up, skel.facing_back, pal[HAIR])
            _draw(canvas, owner, fld, colours, payload, style, wobble_noise, hair)
        elif kind == "occluder":
            fld = _capsule_field(payload, h, w)
            if fld is not None:
                prop = PALETTES[style.palette](rng)["prop"]
                _draw(canvas, owner, fld, prop[None], OCCLUDER, style, wobble_noise)
        else:
            for person in payload:
                fld = _capsule_field(person, h, w, pad=0.5)
                if fld is not None:
                    pal = PALETTES[style.palette](rng)
                    colours = np.stack([pal[SKIN], pal[TOP], pal[BOTTOM]]).astype(np.float32)
                    _draw(canvas, owner, fld, colours, CROWD, replace(style, outline_px=0.0), None)

    # Effects use their own generator so the background-only copy gets the very same texture.
    fx_seed = int(rng.integers(0, 2**63 - 1))
    image = canvas
    for k, (name, strength) in enumerate(style.effects):
        image = EFFECTS[name](image, owner, np.random.default_rng([fx_seed, k]), strength, ctx)
    bg_out = None
    if with_background:
        bg_owner = np.full((h, w), BACKGROUND, np.int16)
        bg_out = background
        for k, (name, strength) in enumerate(style.effects):
            bg_out = EFFECTS[name](bg_out, bg_owner, np.random.default_rng([fx_seed, k]), strength, ctx)
        bg_out = _to_u8(bg_out)

    persons = []
    for i, skel in enumerate(skeletons):
        visible = owner == i
        area = int(visible.sum())
        if area < 16:  # hidden or cut away: not annotated, like the tiny people COCO skips
            continue
        ys, xs = np.nonzero(visible)
        kps = np.zeros((NUM_HUMANART_KEYPOINTS, 3))
        for j, (x, y) in enumerate(skel.joints):
            ix, iy = int(np.floor(x)), int(np.floor(y))
            if not (0 <= ix < w and 0 <= iy < h) or rng.random() < style.unlabelled_prob:
                continue  # outside the image or skipped by the annotator: [0, 0, 0]
            kps[j] = (x, y, 2.0 if owner[iy, ix] == i else 1.0)
        bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))
        persons.append(PersonGT(kps, bbox, float(area), 0, mask_to_rle(visible), i))
    crowd = owner == CROWD
    crowd_area = int(crowd.sum())
    if crowd_area >= 16:
        ys, xs = np.nonzero(crowd)
        bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min()))
        persons.append(
            PersonGT(np.zeros((NUM_HUMANART_KEYPOINTS, 3)), bbox, float(crowd_area), 1, mask_to_rle(crowd), CROWD)
        )
    return SceneRender(_to_u8(image), persons, owner, bg_out)
