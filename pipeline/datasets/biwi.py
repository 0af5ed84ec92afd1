"""BIWI Kinect Head Pose (test set): readers of the raw ``hpdb`` and of FSA-Net's npz, and a writer.

Raw layout (Fanelli et al., https://icu.ee.ethz.ch/research/datsets.html)::

    root/hpdb/NN/frame_XXXXX_rgb.png      640×480 colour frame
    root/hpdb/NN/frame_XXXXX_pose.txt     3 rows of the head rotation, blank line, head centre (mm),
                                          both in the DEPTH camera's frame; every value is followed
                                          by a space ("0.98 -0.02 0.2 ")
    root/hpdb/NN/frame_XXXXX_depth.bin    run-length-encoded depth (see :func:`encode_depth_bin`)
    root/hpdb/NN/rgb.cal, depth.cal       K (3 rows), blank, 4 distortion coefficients, blank,
                                          R (3 rows), blank, t (mm): p_cam = R · p_depth + t
    root/hpdb/NN.obj                      the subject's head template

Angles: HopeNet's reading of ``pose.txt`` (:func:`geometry.biwi_matrix_to_euler`). BIWI has no
landmarks, so the face box stands in for the landmark box the other sets have: a square of
:data:`FACE_BOX_MM`, :data:`FACE_BELOW_CENTRE_MM` below the head centre, mapped into the RGB
camera by ``rgb.cal`` (extrinsics, then K; the distortion coefficients are zero in BIWI and
ignored). Why those sizes: the frontal landmark box of the head model is ≈142×113 mm, centred
≈33 mm below the head centre, so after the same margins a BIWI crop frames the face as a
300W-LP or AFLW2000 crop does. A 200 mm square around the centre (the whole head with air
around it) left the face half the crop: a probe of the VLM's vision features, fit on 300W-LP,
read BIWI's yaw at r = −0.18 that way and r = +0.7 on crops of the face's size.

The synthetic writer's ``depth.bin`` holds the rendered depth registered to the RGB camera (not
re-projected into the depth camera): the real encoding with plausible content, which no reader
here uses.

FSA-Net's pre-cropped form ``BIWI_noTrack.npz`` (Yang et al., https://github.com/shamangary/FSA-Net)
holds ``image`` N×64×64×3 uint8 **BGR**, ``pose`` N×3 ``[yaw, pitch, roll]`` degrees and ``img_size``.
"""

from __future__ import annotations

import functools
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import geometry
from pipeline.datasets import _common
from pipeline.datasets.base import BadRecord, HeadPoseSample, Item, LayoutError, Listing
from pipeline.synth import head

SPLIT = "test"
FACE_BOX_MM = 120.0  # side of the square face box (the landmark box's stand-in)
FACE_BELOW_CENTRE_MM = 33.0  # how far below the head centre the face box is centred
HEAD_BOX_MM = 200.0  # the whole head around its centre: the synthetic npz's pre-cropped faces
NPZ_NAME = "BIWI_noTrack.npz"
NPZ_SIZE = 64
WIDTH, HEIGHT = 640, 480
# Kinect intrinsics as in BIWI's calibration files.
K_RGB = np.array([[517.679, 0.0, 320.0], [0.0, 517.679, 240.5], [0.0, 0.0, 1.0]])
K_DEPTH = np.array([[575.816, 0.0, 320.0], [0.0, 575.816, 240.0], [0.0, 0.0, 1.0]])
_SEQ = re.compile(r"^\d{2}$")
_FRAME = re.compile(r"^frame_\d+$")
_EXPECTED_HPDB = "BIWI: hpdb/NN/frame_XXXXX_rgb.png + frame_XXXXX_pose.txt (+ rgb.cal per sequence)"
_EXPECTED_NPZ = f"BIWI: {NPZ_NAME} (image N×H×W×3 uint8, pose N×3) in the root, or the .npz path itself"


# ------------------------------------------------------------------------ text formats
@dataclass(frozen=True)
class Calibration:
    """A BIWI ``*.cal`` file: intrinsics, distortion and the depth → camera extrinsics (mm)."""

    K: np.ndarray
    dist: np.ndarray
    R: np.ndarray
    t: np.ndarray

    def to_camera(self, p_depth: np.ndarray) -> np.ndarray:
        """A depth-camera point in this camera's frame: ``R · p + t``."""
        return self.R @ np.asarray(p_depth, float) + self.t


def _rows(path: Path, rel: str, field: str) -> list[list[str]]:
    """The non-blank lines of a text file split into tokens; BadRecord if missing / not text."""
    if not path.is_file():
        raise BadRecord(rel, field, "missing file")
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise BadRecord(rel, field, f"unreadable ({type(e).__name__}: {e})") from None
    return [line.split() for line in text.splitlines() if line.strip()]


def _numbers(rows: list[list[str]], n_rows: int, n_cols: int, rel: str, field: str) -> np.ndarray:
    """``rows`` as an ``n_rows``×``n_cols`` finite float array, or BadRecord naming ``field``."""
    if len(rows) != n_rows or any(len(r) != n_cols for r in rows):
        got = "×".join(str(len(r)) for r in rows) or "nothing"
        raise BadRecord(rel, field, f"expected {n_rows} row(s) of {n_cols} numbers, got {got}")
    try:
        arr = np.array([[float(v) for v in r] for r in rows])
    except ValueError as e:
        raise BadRecord(rel, field, f"not a number ({e})") from None
    _common.require_finite(arr, rel, field)
    return arr


def read_pose(path: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``frame_XXXXX_pose.txt``: ``(rotation 3×3, head centre (3,) mm)``, depth-camera frame.

    Raises:
        BadRecord: ``pose.txt`` (missing, not text), ``pose.txt:rotation`` or
            ``pose.txt:translation`` (wrong number of values, not numeric, NaN / inf).
    """
    rows = _rows(path, rel, "pose.txt")
    M = _numbers(rows[:3], 3, 3, rel, "pose.txt:rotation")
    c = _numbers(rows[3:], 1, 3, rel, "pose.txt:translation")[0]
    return M, c


def format_pose(M: np.ndarray, centre: np.ndarray) -> str:
    """``pose.txt`` text as BIWI writes it (6 significant digits, a space after every value)."""
    lines = ["".join(f"{v:g} " for v in row) for row in np.asarray(M)]
    return "\n".join(lines) + "\n\n" + "".join(f"{v:g} " for v in centre) + "\n"


def read_cal(path: Path, rel: str) -> Calibration:
    """Parse ``rgb.cal`` / ``depth.cal`` (lines after the translation are ignored).

    Raises:
        BadRecord: field ``rgb.cal`` (missing, not text) or ``rgb.cal:intrinsics`` /
            ``:distortion`` / ``:rotation`` / ``:translation`` (wrong count, not numeric, NaN).
    """
    name = Path(rel).name
    rows = _rows(path, rel, name)
    return Calibration(
        K=_numbers(rows[0:3], 3, 3, rel, f"{name}:intrinsics"),
        dist=_numbers(rows[3:4], 1, 4, rel, f"{name}:distortion")[0],
        R=_numbers(rows[4:7], 3, 3, rel, f"{name}:rotation"),
        t=_numbers(rows[7:8], 1, 3, rel, f"{name}:translation")[0],
    )


def format_cal(cal: Calibration) -> str:
    """A ``*.cal`` file's text in BIWI's layout."""

    def block(a):
        return "".join("".join(f"{v:g} " for v in row) + "\n" for row in np.atleast_2d(a))

    return "\n".join([block(cal.K), block(cal.dist), block(cal.R), block(cal.t)])


def encode_depth_bin(depth_mm: np.ndarray) -> bytes:
    """BIWI's compressed depth format (Fanelli's ``loadDepthImageCompressed``).

    ``int32 width, int32 height`` then, until width·height values are covered, repeated
    ``int32 numempty`` (zeros), ``int32 numfull``, ``numfull × int16`` depths in mm, little-endian.
    """
    h, w = depth_mm.shape
    flat = np.clip(np.rint(depth_mm), 0, 32767).astype("<i2").ravel()
    full = flat != 0
    edges = np.concatenate([[0], np.flatnonzero(np.diff(full.astype(np.int8))) + 1, [flat.size]])
    out = [struct.pack("<ii", w, h)]
    i, runs = 0, list(zip(edges[:-1], edges[1:], strict=True))
    while i < len(runs):
        empty = 0
        if not full[runs[i][0]]:
            empty = runs[i][1] - runs[i][0]
            i += 1
        values = b""
        if i < len(runs) and full[runs[i][0]]:
            values = flat[runs[i][0] : runs[i][1]].tobytes()
            i += 1
        out.append(struct.pack("<ii", empty, len(values) // 2) + values)
    return b"".join(out)


def decode_depth_bin(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_depth_bin`: an (H, W) int16 depth image in mm (0 = no depth).

    Raises:
        ValueError: truncated or inconsistent data.
    """
    w, h = struct.unpack_from("<ii", data, 0)
    out = np.zeros(w * h, np.int16)
    p, off = 0, 8
    while p < w * h:
        empty, nfull = struct.unpack_from("<ii", data, off)
        off += 8
        if empty < 0 or nfull < 0 or p + empty + nfull > w * h or off + 2 * nfull > len(data):
            raise ValueError("inconsistent run lengths")
        out[p + empty : p + empty + nfull] = np.frombuffer(data, "<i2", nfull, off)
        off += 2 * nfull
        p += empty + nfull
    return out.reshape(h, w)


# ------------------------------------------------------------------------- raw reader
def _hpdb_dir(raw_root: Path) -> Path:
    """The ``hpdb`` folder: ``raw_root/hpdb`` or ``raw_root`` itself when it holds the sequences."""
    root = _common.require_dir(raw_root, _EXPECTED_HPDB)
    if (root / "hpdb").is_dir():
        return root / "hpdb"
    if any(_SEQ.match(p.name) and p.is_dir() for p in root.iterdir()):
        return root
    raise LayoutError(f"{root}: no hpdb/ folder and no NN sequence folders; expected {_EXPECTED_HPDB}")


def list_items_hpdb(raw_root: Path) -> Listing:
    """One item per ``frame_XXXXX`` with an ``_rgb.png`` or a ``_pose.txt``.

    Args:
        raw_root: the folder holding ``hpdb/``, or the ``hpdb`` folder itself.

    Returns:
        Items with ``source_id`` ``hpdb/NN/frame_XXXXX`` (the same whichever root was given)
        and ``subset`` = the sequence ``NN``.

    Raises:
        LayoutError: no ``hpdb`` layout, or no frame in it.
    """
    hpdb = _hpdb_dir(raw_root)
    items = [
        Item(source_id=f"hpdb/{seq.name}/{stem}", split=SPLIT, subset=seq.name)
        for seq in sorted(p for p in hpdb.iterdir() if p.is_dir() and _SEQ.match(p.name))
        for stem in _common.list_stems(seq, ("_rgb.png", "_pose.txt"))
        if _FRAME.match(stem)
    ]
    if not items:
        raise LayoutError(f"{hpdb}: no frames; expected {_EXPECTED_HPDB}")
    return Listing(items)


def head_box(
    cal: Calibration, centre_depth: np.ndarray, side_mm: float = FACE_BOX_MM, below_mm: float = FACE_BELOW_CENTRE_MM
) -> tuple[float, float, float, float] | None:
    """The ``side_mm`` square ``below_mm`` under the head centre (image down) in the camera of
    ``cal`` — by default the face box — or None when the centre is not in front of that camera."""
    c = cal.to_camera(centre_depth)
    if c[2] <= 0:
        return None
    u, v = head.project(cal.K, c[None])[0]
    hx = side_mm / 2.0 * cal.K[0, 0] / c[2]
    hy = side_mm / 2.0 * cal.K[1, 1] / c[2]
    v += below_mm * cal.K[1, 1] / c[2]
    return float(u - hx), float(v - hy), float(u + hx), float(v + hy)


def load_item_hpdb(raw_root: Path, item: Item) -> HeadPoseSample:
    """Decode one raw BIWI frame: RGB image, HopeNet angles, head box from ``rgb.cal``.

    Raises:
        BadRecord: missing / unparsable ``pose.txt`` or ``rgb.cal``, missing / corrupt
            ``_rgb.png``, head centre behind the RGB camera.
    """
    hpdb = _hpdb_dir(raw_root)
    parts = item.source_id.split("/")
    if len(parts) != 3 or parts[0] != "hpdb":
        raise BadRecord(item.source_id, "source_id", "expected hpdb/NN/frame_XXXXX")
    _, seq, stem = parts
    folder = hpdb / seq
    pose_rel = f"hpdb/{seq}/{stem}_pose.txt"
    M, centre = read_pose(folder / f"{stem}_pose.txt", pose_rel)
    cal = read_cal(folder / "rgb.cal", f"hpdb/{seq}/rgb.cal")
    box = head_box(cal, centre)
    if box is None:
        raise BadRecord(pose_rel, "pose.txt:translation", "head centre is not in front of the RGB camera")
    yaw, pitch, roll = geometry.biwi_matrix_to_euler(M)
    image = _common.decode_image(folder / f"{stem}_rgb.png", f"hpdb/{seq}/{stem}_rgb.png")
    return HeadPoseSample(image=image, yaw=yaw, pitch=pitch, roll=roll, face_box=box, landmarks=None)


# ------------------------------------------------------------------------- npz reader
def _npz_path(raw_root: Path) -> Path:
    p = Path(raw_root)
    if p.is_file():
        return p
    if (p / NPZ_NAME).is_file():
        return p / NPZ_NAME
    raise LayoutError(f"{p}: no {NPZ_NAME}; expected {_EXPECTED_NPZ}")


@functools.lru_cache(maxsize=2)
def _npz_arrays(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, pose)`` of the npz, validated; cached per worker process.

    Loading the whole ``image`` array for every row would read the file N times; the key
    includes mtime and size so a rewritten file is not served stale.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            image, pose = z["image"], z["pose"]
    except Exception as e:  # BadZipFile, KeyError (missing array), ValueError, OSError
        raise LayoutError(f"{path}: cannot read ({type(e).__name__}: {e}); expected {_EXPECTED_NPZ}") from None
    if image.ndim != 4 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise LayoutError(f"{path}: image is {image.dtype} {image.shape}; expected {_EXPECTED_NPZ}")
    if pose.shape != (len(image), 3) or pose.dtype.kind not in "iuf":
        # Integer or float only: text would be parsed as numbers and complex would lose its imaginary part.
        raise LayoutError(
            f"{path}: pose is {pose.dtype} {pose.shape} for {len(image)} images; expected {_EXPECTED_NPZ}"
        )
    return image, pose


def _npz(raw_root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    path = _npz_path(raw_root)
    st = path.stat()
    return (path, *_npz_arrays(str(path), st.st_mtime_ns, st.st_size))


def list_items_npz(raw_root: Path) -> Listing:
    """One item per row of ``BIWI_noTrack.npz``, ``source_id`` ``BIWI_noTrack.npz#00012``.

    Args:
        raw_root: the folder holding the npz, or the npz path itself.

    Raises:
        LayoutError: no npz, unreadable, or arrays of the wrong kind.
    """
    path, image, _ = _npz(raw_root)
    return Listing([Item(source_id=f"{path.name}#{i:05d}", split=SPLIT) for i in range(len(image))])


def load_item_npz(raw_root: Path, item: Item) -> HeadPoseSample:
    """One npz row: the crop converted BGR → RGB, ``pose`` columns as yaw, pitch, roll; no box.

    Raises:
        BadRecord: a row index outside the file, NaN / inf in the pose.
    """
    path, images, poses = _npz(raw_root)
    _, _, idx = item.source_id.rpartition("#")
    if not idx.isdigit() or int(idx) >= len(images):
        raise BadRecord(path.name, "image", f"row {idx!r} not in 0..{len(images) - 1}")
    i = int(idx)
    pose = poses[i].astype(np.float64)
    if not np.isfinite(pose).all():
        raise BadRecord(path.name, "pose", f"row {i}: NaN or inf")
    rgb = np.ascontiguousarray(images[i][..., ::-1])
    return HeadPoseSample(
        image=rgb, yaw=float(pose[0]), pitch=float(pose[1]), roll=float(pose[2]), face_box=None, landmarks=None
    )


# ------------------------------------------------------------------------------ synthetic
def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with a fixed zip timestamp, so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def _sequence_setup(seed: int, seq: int) -> tuple[head.Identity, Calibration, np.random.Generator]:
    """The subject, the RGB calibration and the trajectory generator of sequence ``seq``."""
    rng = np.random.default_rng([seed, seq, 0])
    idt = head.sample_identity(rng, head.get_look("biwi"))
    # The RGB camera sits a few cm beside the depth camera, turned by about a degree.
    R = geometry.rotation_matrix(*rng.uniform(-1.0, 1.0, 3))
    t = np.array([-24.0, 6.0, -13.0]) + rng.uniform(-1.0, 1.0, 3)
    return idt, Calibration(K_RGB.copy(), np.zeros(4), R, t), rng


# Per-axis amplitude range (yaw, pitch, roll) of a sequence, as fractions of the limits. Sweeping
# every axis across its whole range (an earlier version) made mean |pitch| ≈ 30° and put most
# frames at combined extremes the real set rarely shows.
AMPLITUDE_LOW = np.array([0.5, 0.2, 0.15])
AMPLITUDE_HIGH = np.array([1.05, 0.65, 0.5])


def synthetic_frames(n_sequences: int, frames_per_sequence: int, seed: int) -> Iterator[head.SyntheticHead]:
    """Render synthetic BIWI frames: one subject per sequence moving its head smoothly.

    Angles follow a sinusoid per axis (random amplitude, frequency and phase per sequence)
    plus jitter, clipped to yaw ±75°, pitch ±60°, roll ±50°. The amplitudes
    (:data:`AMPLITUDE_LOW`..:data:`AMPLITUDE_HIGH` of those limits) make yaw sweep widely and
    pitch and roll less, as the real recordings do: the limits are the set's extremes, not
    where most of its frames lie.

    Args:
        n_sequences: sequences ``01``…``NN``.
        frames_per_sequence: frames per sequence.
        seed: the dataset seed.

    Yields:
        :class:`~pipeline.synth.head.SyntheticHead` (source_id ``hpdb/NN/frame_XXXXX``) with
        ``extra``: ``rotation`` (pose.txt matrix), ``centre_depth`` (mm), ``rgb_cal``,
        ``identity``, ``depth`` (mm, RGB-registered), ``box`` (head box), ``crop`` (64×64 RGB),
        ``npz_index``.
    """
    look = head.get_look("biwi")
    limits = np.array([75.0, 60.0, 50.0])
    row = 0
    for seq in range(1, n_sequences + 1):
        idt, cal, traj = _sequence_setup(seed, seq)
        amp = traj.uniform(AMPLITUDE_LOW, AMPLITUDE_HIGH) * limits
        freq, phase = traj.uniform(0.5, 2.0, 3), traj.uniform(0.0, 2 * np.pi, 3)
        base = np.array([traj.uniform(-100.0, 100.0), traj.uniform(-90.0, 10.0), traj.uniform(850.0, 1050.0)])
        for k in range(frames_per_sequence):
            rng = np.random.default_rng([seed, seq, k + 1])
            s = k / max(frames_per_sequence, 1)
            ypr = amp * np.sin(2 * np.pi * freq * s + phase) + rng.normal(0.0, 4.0, 3)
            yaw, pitch, roll = (float(v) for v in np.clip(ypr, -limits, limits))
            M = geometry.euler_to_biwi_matrix(yaw, pitch, roll)
            centre = base + rng.normal(0.0, 15.0, 3)
            # The picture is posed by M itself in the RGB frame (the ~1° extrinsic rotation is
            # left out) so the label describes the picture exactly; only the centre is mapped.
            r = head.render(yaw, pitch, roll, width=WIDTH, height=HEIGHT, look=look, rng=rng, K=cal.K,
                            centre=cal.to_camera(centre), identity=idt)  # fmt: skip
            box = head_box(cal, centre)
            whole = head_box(cal, centre, HEAD_BOX_MM, 0.0)  # FSA-Net's crops hold the whole head
            crop = Image.fromarray(r.image).crop(tuple(int(round(v)) for v in whole))
            crop = np.asarray(crop.resize((NPZ_SIZE, NPZ_SIZE), Image.Resampling.BILINEAR))
            extra = dict(rotation=M, centre_depth=centre, rgb_cal=cal, identity=idt, depth=r.depth, box=box,
                         crop=crop, npz_index=row)  # fmt: skip
            yield head.SyntheticHead(
                f"hpdb/{seq:02d}/frame_{k:05d}", f"{seq:02d}", False, yaw, pitch, roll, r.image, None, extra
            )
            row += 1


def _write_obj(path: Path, idt: head.Identity) -> None:
    verts, faces = head.template_mesh(idt)
    lines = [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in verts] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def write_synthetic(root: Path, n_sequences: int, frames_per_sequence: int, seed: int) -> dict:
    """Write a synthetic BIWI: the raw ``hpdb`` layout and ``BIWI_noTrack.npz`` from the same frames.

    Args:
        root: output folder (created if needed); gets ``hpdb/`` and ``BIWI_noTrack.npz``.
        n_sequences: sequences ``01``…``NN``.
        frames_per_sequence: frames per sequence.
        seed: the dataset seed; the same seed writes identical bytes.

    Returns:
        Frames per sequence (``{"01": F, …}``) and ``BIWI_noTrack.npz``: rows.
    """
    root = Path(root)
    hpdb = root / "hpdb"
    depth_cal = Calibration(K_DEPTH, np.zeros(4), np.eye(3), np.zeros(3))
    counts: dict[str, int] = {}
    crops, poses = [], []
    for s in synthetic_frames(n_sequences, frames_per_sequence, seed):
        folder = hpdb / s.subset
        if s.subset not in counts:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "rgb.cal").write_text(format_cal(s.extra["rgb_cal"]))
            (folder / "depth.cal").write_text(format_cal(depth_cal))
            _write_obj(hpdb / f"{s.subset}.obj", s.extra["identity"])
            counts[s.subset] = 0
        stem = folder / Path(s.source_id).name
        Image.fromarray(s.image).save(f"{stem}_rgb.png", format="PNG", compress_level=1)  # 5× faster than 6
        Path(f"{stem}_pose.txt").write_text(format_pose(s.extra["rotation"], s.extra["centre_depth"]))
        Path(f"{stem}_depth.bin").write_bytes(encode_depth_bin(s.extra["depth"]))
        crops.append(s.extra["crop"][..., ::-1])  # FSA-Net stores OpenCV's BGR
        poses.append((s.yaw, s.pitch, s.roll))
        counts[s.subset] += 1
    root.mkdir(parents=True, exist_ok=True)
    _save_npz(
        root / NPZ_NAME,
        {
            "image": np.array(crops, dtype=np.uint8).reshape(-1, NPZ_SIZE, NPZ_SIZE, 3),
            "pose": np.array(poses, dtype=np.float64).reshape(-1, 3),
            "img_size": np.array(NPZ_SIZE),
        },
    )
    counts[NPZ_NAME] = len(poses)
    return counts
