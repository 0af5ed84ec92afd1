"""Synthetic writers and raw readers of 300W-LP, AFLW2000 and BIWI (hpdb + FSA-Net npz).

Three kinds of evidence that the readers are right before anyone has the real data:
writer → reader recovers the sampled ground truth; hand-made files in each real layout (written
here with scipy / PIL / plain text, not by the writers) read as the formats define; and every
bad input is a BadRecord naming its file and field (or a LayoutError for a wrong root).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pipeline import geometry
from pipeline.datasets import aflw2000, biwi, w300lp
from pipeline.datasets.base import BadRecord, Item, LayoutError
from pipeline.synth import head

SEED = 7
ANGLE_TOL = 0.01  # degrees


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def w300lp_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("300w_lp")
    counts = w300lp.write_synthetic(root, n_per_subset=2, seed=SEED)
    return root, counts, {s.source_id: s for s in w300lp.synthetic_samples(2, SEED)}


@pytest.fixture(scope="module")
def aflw_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("aflw2000")
    counts = aflw2000.write_synthetic(root, n=4, seed=SEED)
    return root, counts, {s.source_id: s for s in aflw2000.synthetic_samples(4, SEED)}


@pytest.fixture(scope="module")
def biwi_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("biwi")
    counts = biwi.write_synthetic(root, n_sequences=2, frames_per_sequence=2, seed=SEED)
    return root, counts, {s.source_id: s for s in biwi.synthetic_frames(2, 2, SEED)}


def _mean_abs_diff(a: np.ndarray, b: np.ndarray, block: int = 5) -> float:
    """Mean |a − b| of ``block``×``block`` means: JPEG drops the sensor grain, not the picture."""
    h, w = (a.shape[0] // block) * block, (a.shape[1] // block) * block

    def blocks(x):
        return x[:h, :w].astype(float).reshape(h // block, block, w // block, block, 3).mean((1, 3))

    return float(np.abs(blocks(a) - blocks(b)).mean())


# ------------------------------------------------------------------ writer → reader: 300W-LP
def test_300w_lp_recovers_ground_truth(w300lp_data):
    root, counts, truth = w300lp_data
    assert counts == {f: 2 for f in w300lp.FOLDERS}
    listing = w300lp.list_items(root)
    assert {i.source_id for i in listing.items} == set(truth)
    assert listing.rejected == []
    for item in listing.items:
        t = truth[item.source_id]
        assert item.split == "train" and item.subset == item.source_id.split("/")[0]
        assert item.flip == item.subset.endswith("_Flip") == t.flip
        s = w300lp.load_item(root, item)
        assert (s.yaw, s.pitch, s.roll) == pytest.approx((t.yaw, t.pitch, t.roll), abs=ANGLE_TOL)
        assert np.array_equal(s.landmarks, t.landmarks)  # float64 in the .mat: exact
        assert s.face_box == (
            t.landmarks[:, 0].min(),
            t.landmarks[:, 1].min(),
            t.landmarks[:, 0].max(),
            t.landmarks[:, 1].max(),
        )
        assert s.image.shape == (450, 450, 3) and s.image.dtype == np.uint8
        assert _mean_abs_diff(s.image, t.image) < 3.0  # JPEG noise only


def test_300w_lp_flip_twins_are_mirrors(w300lp_data):
    root, _, _ = w300lp_data
    for subset in w300lp.SUBSETS:
        for mat in sorted((root / subset).glob("*.mat")):
            a = w300lp.load_item(root, Item(f"{subset}/{mat.stem}", "train", subset))
            b = w300lp.load_item(root, Item(f"{subset}_Flip/{mat.stem}", "train", f"{subset}_Flip", True))
            assert (b.yaw, b.pitch, b.roll) == pytest.approx((-a.yaw, a.pitch, -a.roll), abs=1e-5)
            assert np.array_equal(b.landmarks, geometry.flip_points_x(a.landmarks, 450))
            assert _mean_abs_diff(b.image, a.image[:, ::-1]) < 4.0


def test_300w_lp_mat_keys_and_types(w300lp_data):
    root, _, _ = w300lp_data
    mat = scipy.io.loadmat(str(next((root / "IBUG").glob("*.mat"))))
    assert mat["Pose_Para"].shape == (1, 7) and mat["Pose_Para"].dtype == np.float32
    assert mat["pt2d"].shape == (2, 68) and mat["pt2d"].dtype == np.float64
    assert mat["Shape_Para"].shape == (199, 1) and mat["Exp_Para"].shape == (29, 1)
    assert mat["roi"].shape == (1, 4)


# ------------------------------------------------------------------ writer → reader: AFLW2000
def test_aflw2000_recovers_ground_truth(aflw_data):
    root, counts, truth = aflw_data
    listing = aflw2000.list_items(root)
    assert [i.source_id for i in listing.items] == sorted(truth)
    assert all(i.source_id.startswith("image") and i.split == "test" for i in listing.items)
    beyond = 0
    for item in listing.items:
        t, s = truth[item.source_id], aflw2000.load_item(root, item)
        assert (s.yaw, s.pitch, s.roll) == pytest.approx((t.yaw, t.pitch, t.roll), abs=ANGLE_TOL)
        assert np.array_equal(s.landmarks, t.landmarks)
        assert _mean_abs_diff(s.image, t.image) < 3.0
        # Out-of-range labels are returned as stored: the ingestion filters them, not the reader.
        beyond += max(abs(s.yaw), abs(s.pitch), abs(s.roll)) > 99.0
    assert beyond == counts["beyond_99"] == 1


# ---------------------------------------------------------------------- writer → reader: BIWI
def test_biwi_hpdb_recovers_ground_truth(biwi_data):
    root, counts, truth = biwi_data
    assert counts == {"01": 2, "02": 2, biwi.NPZ_NAME: 4}
    listing = biwi.list_items_hpdb(root)
    assert [i.source_id for i in listing.items] == sorted(truth)
    # The hpdb folder itself is an accepted root and gives the same items.
    assert biwi.list_items_hpdb(root / "hpdb").items == listing.items
    for item in listing.items:
        t = truth[item.source_id]
        assert item.subset == t.subset and item.split == "test"
        for r in (root, root / "hpdb"):
            s = biwi.load_item_hpdb(r, item)
            assert (s.yaw, s.pitch, s.roll) == pytest.approx((t.yaw, t.pitch, t.roll), abs=ANGLE_TOL)
            assert s.face_box == pytest.approx(t.extra["box"], abs=0.05)
            assert s.landmarks is None and np.array_equal(s.image, t.image)  # PNG: lossless
        # The box is on the face: the rendered depth there is the head, not background; it is
        # FACE_BOX_MM wide at the head's distance, centred FACE_BELOW_CENTRE_MM under the centre.
        x0, y0, x1, y1 = s.face_box
        assert t.extra["depth"][round((y0 + y1) / 2), round((x0 + x1) / 2)] > 0
        c = t.extra["rgb_cal"].to_camera(t.extra["centre_depth"])
        u, v = (biwi.K_RGB @ c)[:2] / c[2]
        f = biwi.K_RGB[0, 0] / c[2]
        assert x1 - x0 == pytest.approx(biwi.FACE_BOX_MM * f)
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((u, v + biwi.FACE_BELOW_CENTRE_MM * f), abs=1e-3)


def test_biwi_files_follow_the_real_layout(biwi_data):
    root, _, truth = biwi_data
    seq = root / "hpdb" / "01"
    assert {p.name for p in seq.iterdir()} >= {
        "rgb.cal",
        "depth.cal",
        "frame_00000_rgb.png",
        "frame_00000_pose.txt",
        "frame_00000_depth.bin",
    }
    assert (root / "hpdb" / "01.obj").read_text().startswith("v ")
    lines = (seq / "frame_00000_pose.txt").read_text().split("\n")
    assert lines[3] == "" and all(line.endswith(" ") and len(line.split()) == 3 for line in lines[:3] + [lines[4]])
    rgb = biwi.read_cal(seq / "rgb.cal", "rgb.cal")
    depth = biwi.read_cal(seq / "depth.cal", "depth.cal")
    assert np.allclose(depth.R, np.eye(3)) and np.allclose(depth.t, 0.0)
    assert not np.allclose(rgb.R, np.eye(3)) and np.allclose(rgb.R @ rgb.R.T, np.eye(3), atol=1e-5)
    assert np.allclose(rgb.t, [-24.0, 6.0, -13.0], atol=1.0)
    # depth.bin: BIWI's run-length format, decoding to the rendered depth in mm.
    t = truth["hpdb/01/frame_00000"]
    decoded = biwi.decode_depth_bin((seq / "frame_00000_depth.bin").read_bytes())
    assert np.array_equal(decoded, np.rint(t.extra["depth"]).astype(np.int16))


def test_biwi_npz_matches_raw_frames_and_is_bgr(biwi_data):
    root, _, truth = biwi_data
    with np.load(root / biwi.NPZ_NAME) as z:
        on_disk, pose, size = z["image"], z["pose"], int(z["img_size"])
    assert on_disk.shape == (4, 64, 64, 3) and on_disk.dtype == np.uint8 and size == 64
    raw = {i.source_id: biwi.load_item_hpdb(root, i) for i in biwi.list_items_hpdb(root).items}
    items = biwi.list_items_npz(root).items
    assert [i.source_id for i in items] == [f"BIWI_noTrack.npz#{k:05d}" for k in range(4)]
    assert biwi.list_items_npz(root / biwi.NPZ_NAME).items == items  # the npz path itself
    for t in truth.values():
        k = t.extra["npz_index"]
        s = biwi.load_item_npz(root, items[k])
        r = raw[t.source_id]
        assert (s.yaw, s.pitch, s.roll) == pytest.approx((r.yaw, r.pitch, r.roll), abs=ANGLE_TOL)
        assert tuple(pose[k]) == pytest.approx((t.yaw, t.pitch, t.roll), abs=1e-12)
        assert np.array_equal(on_disk[k], t.extra["crop"][..., ::-1])  # BGR on disk
        assert np.array_equal(s.image, t.extra["crop"])  # RGB from the reader
        assert s.face_box is None and s.landmarks is None


# ----------------------------------------------------------------------------- the renderer
def _frontal(seed: int, look: str = "300w_lp"):
    return head.render_head(
        0.0, 0.0, 0.0, width=450, height=450, look=head.get_look(look), rng=np.random.default_rng(seed)
    )


def _lum(img: np.ndarray, p: np.ndarray) -> float:
    return float(img[int(round(p[1])), int(round(p[0]))].astype(float).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_landmarks_land_on_the_painted_features(seed):
    img, lm, _ = _frontal(seed)
    for eye, corner in ((slice(36, 42), 48), (slice(42, 48), 54)):
        centre = lm[eye].mean(0)
        cheek = centre + 0.4 * (lm[corner] - centre)
        assert _lum(img, centre) < 0.5 * _lum(img, cheek)  # iris/pupil vs skin
    lower_lip = (lm[57] + lm[66]) / 2
    cheek = (lm[36:42].mean(0) + lm[48]) / 2

    def redness(p):
        r, g, _ = img[int(round(p[1])), int(round(p[0]))].astype(float)
        return r / max(g, 1.0)

    assert redness(lower_lip) > 1.2 * redness(cheek)
    brow = lm[19]
    assert _lum(img, brow) < 0.8 * _lum(img, brow - [0.0, 0.35 * (lm[37, 1] - brow[1])] - [0.0, 8.0])
    x0, y0, x1, y1 = lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()
    assert 0 < x0 < x1 < 449 and 0 < y0 < y1 < 449 and x1 - x0 > 100


def test_landmarks_follow_the_ibug_order():
    _, lm, _ = _frontal(3)
    x, y = lm[:, 0], lm[:, 1]
    assert x[0] < x[8] < x[16] and y[8] == y[:17].max()  # jaw left → chin → right
    assert x[17] < x[21] < x[22] < x[26]  # brows
    assert y[27] < y[28] < y[29] < y[30]  # nose bridge top → tip
    assert x[31] < x[33] < x[35]
    assert x[36] < x[39] < x[42] < x[45] and y[37] < y[41] and y[43] < y[47]  # eyes: corners, lids
    assert x[48] < x[51] < x[54] and y[51] < y[57] and y[61] <= y[67]  # lips
    assert y[19] < y[37] < y[30] < y[51] < y[8]  # brow above eye above nose tip above mouth above chin


def test_angle_convention_in_the_image():
    """yaw > 0 turns the face to the image left, pitch > 0 up, roll > 0 clockwise."""

    def lm(yaw, pitch, roll):
        return head.render_head(
            yaw,
            pitch,
            roll,
            width=450,
            height=450,
            look=head.get_look("300w_lp"),
            rng=np.random.default_rng(4),
            centre=np.array([0.0, 0.0, 800.0]),
        )[1]

    front = lm(0, 0, 0)
    assert lm(30, 0, 0)[30, 0] < front[30, 0] - 20
    assert lm(-30, 0, 0)[30, 0] > front[30, 0] + 20
    assert lm(0, 20, 0)[30, 1] < front[30, 1] - 10
    rolled = lm(0, 0, 20)
    assert rolled[45, 1] - rolled[36, 1] > 20  # the image-right eye is now lower


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (0, 25, 0), (0, 0, 40), (-50, 20, -30), (70, -35, 15)])
def test_pose_is_what_hopenet_draw_axis_draws(angles):
    """The head axes in the image are HopeNet's draw_axis (red x right, green y down, blue = face)."""
    yaw_d, pitch_d, roll_d = angles
    P = head.pose_matrix(*angles)
    pitch, yaw, roll = math.radians(pitch_d), -math.radians(yaw_d), math.radians(roll_d)
    x_axis = (
        math.cos(yaw) * math.cos(roll),
        math.cos(pitch) * math.sin(roll) + math.cos(roll) * math.sin(pitch) * math.sin(yaw),
    )
    y_axis = (
        -math.cos(yaw) * math.sin(roll),
        math.cos(pitch) * math.cos(roll) - math.sin(pitch) * math.sin(yaw) * math.sin(roll),
    )
    z_axis = (math.sin(yaw), -math.cos(yaw) * math.sin(pitch))
    assert np.allclose(P[:2, 0], x_axis) and np.allclose(P[:2, 1], y_axis)
    assert np.allclose(-P[:2, 2], z_axis)  # the face looks along the head's −z


def test_mirrored_render_is_flip_euler():
    """Rendering at flip_euler's angles with the centre mirrored gives the mirrored landmarks,
    up to the left/right relabelling that a mirror implies for a symmetric face."""
    look = head.get_look("300w_lp")
    centre = np.array([40.0, -20.0, 800.0])
    _, a, _ = head.render_head(
        25, 10, -15, width=450, height=450, look=look, rng=np.random.default_rng(9), centre=centre
    )
    _, b, _ = head.render_head(
        *geometry.flip_euler(25, 10, -15),
        width=450,
        height=450,
        look=look,
        rng=np.random.default_rng(9),
        centre=centre * [-1, 1, 1],
    )
    mirrored = geometry.flip_points_x(a, 450)
    # Jaw points k ↔ 16 − k are mirror partners; so are the two eyes' corners 36 ↔ 45.
    assert np.allclose(mirrored[:17], b[16::-1], atol=1e-6)
    assert np.allclose(mirrored[36], b[45], atol=1e-6) and np.allclose(mirrored[30], b[30], atol=1e-6)


def test_datasets_look_different():
    """300W-LP's colourful clutter vs BIWI's grey lab wall: a real cross-dataset shift."""

    def border_stats(look, w, h, seeds=range(3)):
        sats, hists = [], []
        for seed in seeds:
            img, _, _ = head.render_head(
                0, 0, 0, width=w, height=h, look=head.get_look(look), rng=np.random.default_rng(seed)
            )
            b = np.concatenate([img[:30].reshape(-1, 3), img[:, :30].reshape(-1, 3)]).astype(float) / 255
            sats.append(((b.max(1) - b.min(1)) / np.maximum(b.max(1), 1e-6)).mean())
            hists.append(np.concatenate([np.histogram(b[:, c], 16, (0, 1))[0] / len(b) for c in range(3)]))
        return np.mean(sats), np.mean(hists, axis=0)

    sat_w, hist_w = border_stats("300w_lp", 450, 450)
    sat_b, hist_b = border_stats("biwi", 640, 480)
    sat_a, hist_a = border_stats("aflw2000", 450, 450)
    assert sat_w > 0.3 and sat_b < 0.2
    assert np.abs(hist_w - hist_b).sum() > 1.0 and np.abs(hist_a - hist_b).sum() > 1.0
    assert np.abs(hist_w - hist_a).sum() > 0.5


def test_render_is_deterministic_and_seed_dependent():
    a = _frontal(11)
    b = _frontal(11)
    c = _frontal(12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_unknown_look_lists_valid_ones():
    with pytest.raises(KeyError, match="300w_lp"):
        head.get_look("nope")


# -------------------------------------------------------------------- hand-made raw layouts
def _photo(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)


_PT2D = np.stack([np.linspace(120.0, 330.0, 68), 150.0 + 40.0 * np.sin(np.arange(68))])  # 2×68
_POSE_PARA = np.array([[0.1, -0.2, 0.3, 225.0, 230.0, 0.0, 0.0012]], dtype=np.float32)  # pitch, yaw, roll


def make_300w_lp(root: Path) -> None:
    for folder in ("AFW", "AFW_Flip"):
        (root / folder).mkdir(parents=True)
        Image.fromarray(_photo(450, 450)).save(root / folder / "AFW_1_0.jpg", quality=95)
        scipy.io.savemat(
            root / folder / "AFW_1_0.mat",
            {"Pose_Para": _POSE_PARA, "pt2d": _PT2D, "roi": np.array([[1.0, 2.0, 3.0, 4.0]])},
        )


def make_aflw2000(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(450, 450)).save(root / "image00042.jpg", quality=95)
    pt3d = np.vstack([_PT2D, np.linspace(-30.0, 30.0, 68)[None]])
    scipy.io.savemat(root / "image00042.mat", {"Pose_Para": _POSE_PARA, "pt3d_68": pt3d})


# Values of the shape of BIWI's files (a frame of sequence 01 and its rgb.cal).
_POSE_TXT = (
    "0.977642 -0.0202421 -0.209335 \n0.0205474 0.999788 -0.000720011 \n"
    "0.209305 -0.00358463 0.977851 \n\n22.4451 42.4837 962.595 \n"
)
_RGB_CAL = (
    "517.679 0 320 \n0 517.679 240.5 \n0 0 1 \n\n0 0 0 0 \n\n0.999947 0.00432361 0.00929419 \n"
    "-0.00446314 0.999877 0.0150443 \n-0.009228 -0.015085 0.999843 \n\n-24.0198 5.8896 -13.2308 \n"
)


def make_biwi(root: Path) -> None:
    seq = root / "hpdb" / "01"
    seq.mkdir(parents=True)
    Image.fromarray(_photo(640, 480)).save(seq / "frame_00004_rgb.png")
    (seq / "frame_00004_pose.txt").write_text(_POSE_TXT)
    (seq / "rgb.cal").write_text(_RGB_CAL)


def make_biwi_npz(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    image = np.zeros((3, 64, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 10  # B, G, R
    pose = np.array([[10.0, -5.0, 3.0], [-40.0, 20.0, 0.5], [0.0, 0.0, -12.0]])
    np.savez(root / "BIWI_noTrack.npz", image=image, pose=pose, img_size=64)


def test_hand_made_300w_lp_reads_as_defined(tmp_path):
    make_300w_lp(tmp_path)
    items = w300lp.list_items(tmp_path).items
    assert [(i.source_id, i.subset, i.flip) for i in items] == [
        ("AFW/AFW_1_0", "AFW", False),
        ("AFW_Flip/AFW_1_0", "AFW_Flip", True),
    ]
    s = w300lp.load_item(tmp_path, items[0])
    # Pose_Para[0][:3] is [pitch, yaw, roll] in radians.
    assert (s.yaw, s.pitch, s.roll) == pytest.approx(
        (math.degrees(-0.2), math.degrees(0.1), math.degrees(0.3)), abs=1e-5
    )
    assert np.array_equal(s.landmarks, _PT2D.T)
    assert s.face_box == (120.0, _PT2D[1].min(), 330.0, _PT2D[1].max())
    assert _mean_abs_diff(s.image, _photo(450, 450)) < 3.0


def test_hand_made_aflw2000_reads_as_defined(tmp_path):
    make_aflw2000(tmp_path)
    items = aflw2000.list_items(tmp_path).items
    assert [i.source_id for i in items] == ["image00042"]
    s = aflw2000.load_item(tmp_path, items[0])
    assert (s.yaw, s.pitch, s.roll) == pytest.approx(
        (math.degrees(-0.2), math.degrees(0.1), math.degrees(0.3)), abs=1e-5
    )
    assert np.array_equal(s.landmarks, _PT2D.T)  # x, y rows of pt3d_68


def test_hand_made_biwi_reads_as_defined(tmp_path):
    make_biwi(tmp_path)
    items = biwi.list_items_hpdb(tmp_path).items
    assert [(i.source_id, i.subset) for i in items] == [("hpdb/01/frame_00004", "01")]
    s = biwi.load_item_hpdb(tmp_path, items[0])
    # HopeNet's reading, spelled out: R = Mᵀ, roll = −atan2(R10, R00), yaw = −atan2(−R20, √(R21²+R22²)).
    M = np.array([[float(v) for v in line.split()] for line in _POSE_TXT.split("\n")[:3]])
    R = M.T
    expected = (
        -math.degrees(math.atan2(-R[2, 0], math.hypot(R[2, 1], R[2, 2]))),
        math.degrees(math.atan2(R[2, 1], R[2, 2])),
        -math.degrees(math.atan2(R[1, 0], R[0, 0])),
    )
    assert (s.yaw, s.pitch, s.roll) == pytest.approx(expected, abs=1e-9)
    assert s.yaw == pytest.approx(-12.08, abs=0.01)  # turned about 12° toward the image right
    # Head centre into the RGB camera with rgb.cal's R, t, then K; the face box: 120 mm, 33 mm below.
    Rc = np.array(
        [[0.999947, 0.00432361, 0.00929419], [-0.00446314, 0.999877, 0.0150443], [-0.009228, -0.015085, 0.999843]]
    )
    c = Rc @ np.array([22.4451, 42.4837, 962.595]) + np.array([-24.0198, 5.8896, -13.2308])
    u, v = 517.679 * c[0] / c[2] + 320.0, 517.679 * c[1] / c[2] + 240.5
    half, v = 60.0 * 517.679 / c[2], v + 33.0 * 517.679 / c[2]
    assert s.face_box == pytest.approx((u - half, v - half, u + half, v + half), abs=1e-9)
    assert np.array_equal(s.image, _photo(640, 480)) and s.landmarks is None


def test_hand_made_biwi_npz_reads_as_defined(tmp_path):
    make_biwi_npz(tmp_path)
    items = biwi.list_items_npz(tmp_path).items
    assert [i.source_id for i in items] == [
        "BIWI_noTrack.npz#00000",
        "BIWI_noTrack.npz#00001",
        "BIWI_noTrack.npz#00002",
    ]
    s = biwi.load_item_npz(tmp_path, items[1])
    assert (s.yaw, s.pitch, s.roll) == (-40.0, 20.0, 0.5)  # columns: yaw, pitch, roll
    assert (s.image[0, 0] == [10, 100, 200]).all()  # BGR on disk → RGB
    assert s.face_box is None


# ------------------------------------------------------------------------------ bad inputs
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not what the file should hold \x00\xff" * 3)


def _edit_mat(path: Path, **changes) -> None:
    mat = {k: v for k, v in scipy.io.loadmat(str(path)).items() if not k.startswith("__")}
    for key, value in changes.items():
        if value is None:
            del mat[key]
        else:
            mat[key] = value
    scipy.io.savemat(path, mat)


def _nan_at(a: np.ndarray, idx) -> np.ndarray:
    a = np.array(a, dtype=a.dtype, copy=True)
    a[idx] = np.nan
    return a


def _write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_text(text)


@dataclass(frozen=True)
class Bad:
    id: str
    dataset: str
    mutate: Callable[[Path], None]
    file: str
    field: str


_J, _M = "AFW/AFW_1_0.jpg", "AFW/AFW_1_0.mat"
_AJ, _AM = "image00042.jpg", "image00042.mat"
_P, _C, _I = "hpdb/01/frame_00004_pose.txt", "hpdb/01/rgb.cal", "hpdb/01/frame_00004_rgb.png"
_ROT = _POSE_TXT.split("\n\n")[0]

BAD = [
    Bad("300w-missing-jpg", "300w_lp", lambda r: (r / _J).unlink(), _J, "image"),
    Bad("300w-truncated-jpg", "300w_lp", lambda r: _truncate(r / _J), _J, "image"),
    Bad("300w-not-a-jpg", "300w_lp", lambda r: _garbage(r / _J), _J, "image"),
    Bad("300w-missing-mat", "300w_lp", lambda r: (r / _M).unlink(), _M, "mat"),
    Bad("300w-truncated-mat", "300w_lp", lambda r: _truncate(r / _M), _M, "mat"),
    Bad("300w-not-a-mat", "300w_lp", lambda r: _garbage(r / _M), _M, "mat"),
    Bad("300w-no-pose-para", "300w_lp", lambda r: _edit_mat(r / _M, Pose_Para=None), _M, "Pose_Para"),
    Bad("300w-pose-para-1x6", "300w_lp", lambda r: _edit_mat(r / _M, Pose_Para=_POSE_PARA[:, :6]), _M, "Pose_Para"),
    Bad("300w-pose-para-text", "300w_lp", lambda r: _edit_mat(r / _M, Pose_Para="pitch yaw"), _M, "Pose_Para"),
    Bad("300w-nan-yaw", "300w_lp", lambda r: _edit_mat(r / _M, Pose_Para=_nan_at(_POSE_PARA, (0, 1))), _M, "Pose_Para"),
    Bad("300w-no-pt2d", "300w_lp", lambda r: _edit_mat(r / _M, pt2d=None), _M, "pt2d"),
    Bad("300w-pt2d-68x2", "300w_lp", lambda r: _edit_mat(r / _M, pt2d=_PT2D.T), _M, "pt2d"),
    Bad("300w-inf-pt2d", "300w_lp", lambda r: _edit_mat(r / _M, pt2d=_nan_at(_PT2D, (1, 5)) * np.inf), _M, "pt2d"),
    Bad("aflw-missing-jpg", "aflw2000", lambda r: (r / _AJ).unlink(), _AJ, "image"),
    Bad("aflw-truncated-mat", "aflw2000", lambda r: _truncate(r / _AM), _AM, "mat"),
    Bad("aflw-no-pt3d", "aflw2000", lambda r: _edit_mat(r / _AM, pt3d_68=None), _AM, "pt3d_68"),
    Bad("aflw-pt3d-2x68", "aflw2000", lambda r: _edit_mat(r / _AM, pt3d_68=_PT2D), _AM, "pt3d_68"),
    Bad(
        "aflw-nan-roll",
        "aflw2000",
        lambda r: _edit_mat(r / _AM, Pose_Para=_nan_at(_POSE_PARA, (0, 2))),
        _AM,
        "Pose_Para",
    ),
    Bad("biwi-missing-pose", "biwi_hpdb", lambda r: (r / _P).unlink(), _P, "pose.txt"),
    Bad("biwi-binary-pose", "biwi_hpdb", lambda r: (r / _P).write_bytes(b"\xff\xfe\x00garbage"), _P, "pose.txt"),
    Bad("biwi-pose-two-values", "biwi_hpdb", _write(_P, "1 0 \n0 1 0 \n0 0 1 \n\n1 2 3 \n"), _P, "pose.txt:rotation"),
    Bad("biwi-pose-no-translation", "biwi_hpdb", _write(_P, _ROT + "\n"), _P, "pose.txt:translation"),
    Bad("biwi-pose-text", "biwi_hpdb", _write(_P, _ROT + "\n\n22.4 abc 962.5 \n"), _P, "pose.txt:translation"),
    Bad("biwi-pose-nan", "biwi_hpdb", _write(_P, "nan 0 0 \n0 1 0 \n0 0 1 \n\n1 2 900 \n"), _P, "pose.txt:rotation"),
    Bad("biwi-pose-behind", "biwi_hpdb", _write(_P, _ROT + "\n\n0 0 -900 \n"), _P, "pose.txt:translation"),
    Bad("biwi-missing-cal", "biwi_hpdb", lambda r: (r / _C).unlink(), _C, "rgb.cal"),
    Bad(
        "biwi-cal-bad-k",
        "biwi_hpdb",
        _write(_C, _RGB_CAL.replace("517.679 0 320", "517.679 x 320")),
        _C,
        "rgb.cal:intrinsics",
    ),
    Bad("biwi-cal-short", "biwi_hpdb", _write(_C, _RGB_CAL.rsplit("\n\n", 1)[0] + "\n"), _C, "rgb.cal:translation"),
    Bad("biwi-missing-png", "biwi_hpdb", lambda r: (r / _I).unlink(), _I, "image"),
    Bad("biwi-truncated-png", "biwi_hpdb", lambda r: _truncate(r / _I), _I, "image"),
]

_MAKE = {"300w_lp": make_300w_lp, "aflw2000": make_aflw2000, "biwi_hpdb": make_biwi}
_READ = {
    "300w_lp": (w300lp.list_items, w300lp.load_item, "AFW/AFW_1_0"),
    "aflw2000": (aflw2000.list_items, aflw2000.load_item, "image00042"),
    "biwi_hpdb": (biwi.list_items_hpdb, biwi.load_item_hpdb, "hpdb/01/frame_00004"),
}


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_input_is_a_bad_record_naming_file_and_field(tmp_path, case):
    _MAKE[case.dataset](tmp_path)
    case.mutate(tmp_path)
    list_items, load_item, source_id = _READ[case.dataset]
    items = {i.source_id: i for i in list_items(tmp_path).items}
    assert source_id in items  # a stem with one of its files missing is still listed
    with pytest.raises(BadRecord) as err:
        load_item(tmp_path, items[source_id])
    assert (err.value.file, err.value.field) == (case.file, case.field), str(err.value)


def test_bad_npz_rows_are_bad_records(tmp_path):
    root = tmp_path / "biwi"
    make_biwi_npz(root)
    with np.load(root / "BIWI_noTrack.npz") as z:
        pose = z["pose"].copy()
        image = z["image"]
    pose[2, 1] = np.nan
    np.savez(root / "BIWI_noTrack.npz", image=image, pose=pose, img_size=64)
    items = biwi.list_items_npz(root).items
    biwi.load_item_npz(root, items[1])  # the good rows still load
    with pytest.raises(BadRecord) as err:
        biwi.load_item_npz(root, items[2])
    assert (err.value.file, err.value.field) == ("BIWI_noTrack.npz", "pose")
    with pytest.raises(BadRecord) as err:
        biwi.load_item_npz(root, Item("BIWI_noTrack.npz#00007", "test"))
    assert (err.value.file, err.value.field) == ("BIWI_noTrack.npz", "image")


_LISTERS = {
    "300w_lp": w300lp.list_items,
    "aflw2000": aflw2000.list_items,
    "biwi_hpdb": biwi.list_items_hpdb,
    "biwi_npz": biwi.list_items_npz,
}


@pytest.mark.parametrize("name", sorted(_LISTERS))
@pytest.mark.parametrize("root_kind", ["missing", "empty", "other_dataset", "stray_files"])
def test_wrong_root_is_a_layout_error(tmp_path, name, root_kind):
    root = tmp_path / "raw"
    if root_kind == "empty":
        root.mkdir()
    elif root_kind == "other_dataset":  # 300W-LP's reader given AFLW2000, everyone else given 300W-LP
        (make_aflw2000 if name == "300w_lp" else make_300w_lp)(root)
    elif root_kind == "stray_files":
        root.mkdir()
        (root / "README.txt").write_text("not a dataset")
        (root / "AFW").write_text("a file, not the subset folder")
    with pytest.raises(LayoutError) as err:
        _LISTERS[name](root)
    assert "expected" in str(err.value)


@pytest.mark.parametrize("bad", ["garbage", "no_pose", "float_images", "short_pose"])
def test_broken_npz_is_a_layout_error(tmp_path, bad):
    path = tmp_path / "BIWI_noTrack.npz"
    image = np.zeros((2, 64, 64, 3), np.uint8)
    if bad == "garbage":
        _garbage(path)
    elif bad == "no_pose":
        np.savez(path, image=image)
    elif bad == "float_images":
        np.savez(path, image=image.astype(np.float32), pose=np.zeros((2, 3)))
    else:
        np.savez(path, image=image, pose=np.zeros((1, 3)))
    with pytest.raises(LayoutError, match="expected"):
        biwi.list_items_npz(tmp_path)


# ----------------------------------------------------------------------------- determinism
def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "writer",
    [
        lambda root, seed: w300lp.write_synthetic(root, n_per_subset=1, seed=seed),
        lambda root, seed: aflw2000.write_synthetic(root, n=2, seed=seed),
        lambda root, seed: biwi.write_synthetic(root, n_sequences=1, frames_per_sequence=2, seed=seed),
    ],
    ids=["300w_lp", "aflw2000", "biwi"],
)
def test_same_seed_writes_identical_bytes(tmp_path, writer):
    writer(tmp_path / "a", 3)
    writer(tmp_path / "b", 3)
    writer(tmp_path / "c", 4)
    a, b, c = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert a == b and len(a) >= 4
    assert a.keys() == c.keys() and a != c
