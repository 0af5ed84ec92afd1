"""Bad input at scale: random corruptions of every raw format through the whole ingestion.

Property ("bad input → a clear error naming the file and the field, or a quarantined
record; never a crash deep in numpy, never silent loss"): after any mix of truncations, byte
flips, deleted / emptied files, wrong types and shapes in ``.mat`` variables, JSON fields, BIWI
text files and npz arrays, and NaN / inf values, :func:`pipeline.ingest.ingest` either

* succeeds, and every unit the files still hold is accounted for exactly once
  (``counts_in == kept + filtered + quarantined``, with ``counts_in`` recomputed here from the
  corrupted files themselves), every quarantine entry names a file, a field and a reason, no
  entry is the ingest loop's ``<unexpected>`` catch-all (a reader crash), and every kept number
  is finite; or
* fails with a documented error naming the file: :class:`LayoutError` (a ``ValueError``),
  :class:`IngestError`, or a ``ValueError`` whose message names the offending path.

Anything else (an ``OverflowError`` from Arrow, a ``ValueError`` from numpy, a ``KeyError``…)
propagates and fails the test.  The error budget is 1.0 so that it cannot hide a crash.

Each dataset is written once per module; every example hard-links a copy and *replaces*
(never edits in place) the files it corrupts.  ``HPE_FUZZ_EXAMPLES=500`` runs a deeper,
randomised search; the default (25 examples per format) is derandomised so CI is stable.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import parse_params
from pipeline.datasets import get_writer
from pipeline.datasets._common import load_mat
from pipeline.datasets.base import BadRecord, LayoutError
from pipeline.datasets.coco import write_json
from pipeline.ingest import IngestError, ingest, read_records
from tests.conftest import tiny_params_dict

PARAMS = parse_params(tiny_params_dict())
SETTINGS = {**PARAMS.ingest.model_dump(exclude={"datasets"}), "error_budget": 1.0}
_DEEP = "HPE_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(
    max_examples=int(os.environ.get("HPE_FUZZ_EXAMPLES", "25")),
    deadline=None,
    database=None,
    derandomize=not _DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Written once per module: small, but every code path (flip twins, an AFLW2000 sample beyond
# ±99°, crowd annotations, two splits, several HumanArt super-categories).
_WRITERS = {
    "300w_lp": ("300w_lp", {"n_per_subset": 1}),
    "aflw2000": ("aflw2000", {"n": 3}),
    "biwi": ("biwi", {"n_sequences": 1, "frames_per_sequence": 2}),
    "coco": ("coco", {"n_train_images": 2, "n_val_images": 1}),
    "humanart": ("humanart", {"n_train_per_scene": 1, "n_val_per_scene": 1}),
}
_HUMANART_JSON = ("annotations/training_humanart.json", "annotations/validation_humanart.json")
_COCO_JSON = ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json")


def _prune_humanart(root: Path, keep_every: int = 7) -> None:
    """Keep every ``keep_every``-th image of each split (different scenes and super-categories)
    and delete the rest, so that an example ingests a handful of images, not forty."""
    referenced = set()
    for rel in _HUMANART_JSON:
        doc = json.loads((root / rel).read_text())
        doc["images"] = doc["images"][::keep_every]
        ids = {img["id"] for img in doc["images"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
        referenced |= {img["file_name"] for img in doc["images"]}
        write_json(root / rel, doc)
    for p in (root / "images").rglob("*.jpg"):
        if p.relative_to(root).as_posix() not in referenced:
            p.unlink()
    for p in (root / "annotations").glob("*_humanart_*.json"):  # per-scene files: not read by ingest
        p.unlink()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_raw")
    for folder, (writer, kwargs) in _WRITERS.items():
        get_writer(writer).write(root / folder, seed=PARAMS.seed, **kwargs)
    _prune_humanart(root / "humanart")
    return root


# ------------------------------------------------------------------------ corruptions
def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` as a *new* file at ``path`` (the copy is hard-linked to the pristine data)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


# Values that pass a naive type check but break what comes after: out of the int64 / int32 range
# of the Parquet columns, beyond float32, subnormal, NaN and infinities.
NASTY_INTS = st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 2**64, 10**30])
NASTY_FLOATS = st.sampled_from([1e308, -1e308, 1e30, 5e-324, 1e-300, -0.0, float("nan"), float("inf"), float("-inf")])
NASTY_NUMBERS = NASTY_INTS | NASTY_FLOATS
JSON_VALUES = st.one_of(
    NASTY_NUMBERS,
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
        max_leaves=8,
    ),
)
TOKENS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999", "1e-400", "abc", "0x10", "1,5", "+", "--1", "1e308"]),
    st.floats().map(repr),
    st.text(max_size=5),
)


# Each corruption returns False when it cannot apply (a structured edit of a file that an
# earlier corruption of the same example already made unparsable); bytes are flipped instead.
def _bytes_truncate(path: Path, data: st.DataObject) -> bool:
    raw = path.read_bytes()
    _replace(path, raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="truncate at")])
    return True


def _bytes_flip(path: Path, data: st.DataObject) -> bool:
    raw = bytearray(path.read_bytes())
    if raw:
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), min_size=1, max_size=8)
        )
        for pos, mask in flips:
            raw[pos] ^= mask
        _replace(path, bytes(raw))
    return True


def _bytes_delete(path: Path, data: st.DataObject) -> bool:
    path.unlink()
    return True


def _bytes_empty(path: Path, data: st.DataObject) -> bool:
    _replace(path, b"")
    return True


def _bytes_garbage(path: Path, data: st.DataObject) -> bool:
    _replace(path, data.draw(st.binary(min_size=1, max_size=256), label="garbage"))
    return True


MAT_EDITS = ("value", "value", "shape", "transpose", "string", "cell", "struct", "complex", "bool", "int", "empty",
             "delete", "compress")  # fmt: skip


def _mat_edit(path: Path, data: st.DataObject) -> bool:
    """Replace / delete a ``.mat`` variable, or put NaN / inf / extreme values into it."""
    try:  # through the reader's guarded loader: scipy itself can segfault on a damaged file
        mat = {k: v for k, v in load_mat(path, path.name).items() if not k.startswith("__")}
    except BadRecord:  # already damaged by an earlier corruption of this example
        return False
    if not mat:
        return False
    key = data.draw(st.sampled_from(sorted(mat)), label="mat key")
    value = mat[key]
    real = isinstance(value, np.ndarray) and value.dtype.kind in "iuf"
    arr = value.astype(np.float64) if real else np.ones((1, 7))  # not, after an earlier edit
    how = data.draw(st.sampled_from(MAT_EDITS), label="mat edit")
    if how == "value":
        arr = arr.copy() if arr.size else np.zeros((1, 1))
        value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, 1e30]) | st.floats())
        arr.flat[data.draw(st.integers(0, arr.size - 1))] = value
        mat[key] = arr
    elif how == "shape":
        mat[key] = np.ones(data.draw(st.lists(st.integers(0, 8), max_size=3).map(tuple), label="shape"))
    elif how == "transpose":
        mat[key] = arr.T.copy()
    elif how == "string":
        mat[key] = data.draw(st.text(min_size=1, max_size=8))
    elif how == "cell":
        mat[key] = np.array([1.0, "x", np.zeros((2, 2))], dtype=object)
    elif how == "struct":
        mat[key] = {"a": arr, "b": "text"}
    elif how == "complex":
        mat[key] = arr + 1j
    elif how == "bool":
        mat[key] = arr > arr.mean() if arr.size else arr.astype(bool)
    elif how == "int":
        mat[key] = np.clip(np.nan_to_num(arr), -3e4, 3e4).astype(np.int16)
    elif how == "empty":
        mat[key] = np.zeros((0, 0))
    elif how == "delete":
        del mat[key]
    buf = io.BytesIO()
    # "compress": the same variables as MATLAB's default v7 format writes them (zlib per variable),
    # so that later byte flips hit a compressed stream.
    scipy.io.savemat(buf, mat, format="5", oned_as="column", do_compression=how == "compress")
    _replace(path, buf.getvalue())
    return True


def _json_paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every path below the document root (dict keys and list indices)."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out += _json_paths(child, (*prefix, key))
    return out


def _at(doc, path: tuple):
    for key in path:
        doc = doc[key]
    return doc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_edit(path: Path, data: st.DataObject) -> bool:
    """Replace / delete / duplicate a few nodes of a COCO-style annotation file."""
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:  # already damaged (JSONDecodeError, UnicodeDecodeError)
        return False
    for _ in range(data.draw(st.integers(1, 4), label="json edits")):
        paths = _json_paths(doc)
        if not paths:
            break
        # Pick a field first (``annotations[*].bbox``, ``annotations[*].bbox[*]``, ``images[*].id``),
        # weighted toward the image and annotation entries, then one occurrence of it: uniform
        # over nodes, the 51 keypoint values per annotation and the polygons would drown the
        # handful of fields (ids, sizes, boxes) where most of the checking happens.
        fields: dict[tuple, list[tuple]] = {}
        for node in paths:
            fields.setdefault(tuple("*" if isinstance(k, int) else k for k in node), []).append(node)
        how = data.draw(st.sampled_from(["number", "number", "replace", "replace", "delete", "duplicate"]))
        if how == "number":  # a nasty number of the same kind, into a field that holds a number
            fields = {f: nodes for f, nodes in fields.items() if _is_number(_at(doc, nodes[0]))} or fields
        groups = sorted({f[0] for f in fields}, key=repr)
        group = data.draw(st.sampled_from(["annotations", "annotations", "images", *groups]), label="json part")
        in_group = [f for f in fields if f[0] == group and (len(f) > 2 or group not in ("annotations", "images"))]
        in_group = sorted(in_group or fields, key=repr)
        target = data.draw(st.sampled_from(fields[data.draw(st.sampled_from(in_group), label="json field")]))
        parent = _at(doc, target[:-1])
        last = target[-1]
        if how == "number":
            old = parent[last]
            nasty = NASTY_INTS if isinstance(old, int) and not isinstance(old, bool) else NASTY_FLOATS
            parent[last] = data.draw(nasty, label="nasty number")
        elif how == "replace":
            parent[last] = data.draw(JSON_VALUES, label="new value")
        elif how == "delete":
            del parent[last]
        elif isinstance(parent, list):  # duplicate: the same image / annotation (same id) twice
            parent.append(parent[last])
        else:
            parent[f"{last}_copy"] = parent[last]
    _replace(path, json.dumps(doc).encode())  # allow_nan: NaN / Infinity literals, as Python reads them
    return True


def _text_edit(path: Path, data: st.DataObject) -> bool:
    """Edit a BIWI ``pose.txt`` / ``rgb.cal``: a bad token, a lost, repeated or extra line."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        return False
    how = data.draw(st.sampled_from(["token", "token", "drop", "repeat", "insert"]), label="text edit")
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    if how == "token":
        tokens = lines[i].split() or [""]
        tokens[data.draw(st.integers(0, len(tokens) - 1))] = data.draw(TOKENS, label="token")
        lines[i] = " ".join(tokens) + " "
    elif how == "drop":
        del lines[i]
    elif how == "repeat":
        lines.insert(i, lines[i])
    else:
        lines.insert(i, data.draw(st.sampled_from(["", "1 2 3 ", "0 0 0 0 0 0 ", "nan"])))
    _replace(path, "\n".join(lines).encode("utf-8"))
    return True


def _npz_edit(path: Path, data: st.DataObject) -> bool:
    """Replace / delete an npz array, give it another dtype or shape, or put NaN / inf into ``pose``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        image, pose = arrays["image"], arrays["pose"]
    except Exception:  # already damaged, or an array already replaced by an earlier edit
        return False
    if pose.dtype.kind not in "iuf":  # already given another type by an earlier edit
        return False
    pose = pose.astype(np.float64)
    n = len(image) if image.ndim else 0
    how = data.draw(
        st.sampled_from(
            ["pose_value", "pose_value", "pose_dtype", "pose_shape", "image_dtype", "image_shape", "delete", "extra"]
        ),
        label="npz edit",
    )
    if how == "pose_value" and pose.size:
        pose = pose.copy()
        pose.flat[data.draw(st.integers(0, pose.size - 1))] = data.draw(NASTY_NUMBERS.map(float) | st.floats())
        arrays["pose"] = pose
    elif how == "pose_dtype":
        kind = data.draw(st.sampled_from(["U8", "complex", "bool", "int8", "object", "float16", "S4"]))
        arrays["pose"] = pose.astype(object) if kind == "object" else pose.astype(kind)
    elif how == "pose_shape":
        arrays["pose"] = np.zeros(data.draw(st.sampled_from([(n, 2), (n,), (n + 1, 3), (n, 3, 1), (), (0, 3)])))
    elif how == "image_dtype":
        arrays["image"] = image.astype(data.draw(st.sampled_from(["float32", "int16", "bool", "uint16"])))
    elif how == "image_shape":
        shape = data.draw(
            st.sampled_from([(n, 64, 64), (n, 64, 64, 4), (0, 64, 64, 3), (n, 1, 1, 3), (n, 0, 64, 3), (n, 3)])
        )
        arrays["image"] = np.zeros(shape, np.uint8)
    elif how == "delete":
        del arrays[data.draw(st.sampled_from(sorted(arrays)))]
    else:
        arrays["extra"] = np.arange(3)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # object arrays are pickled: the reader must refuse them, not unpickle
    _replace(path, buf.getvalue())
    return True


def _image_edit(path: Path, data: st.DataObject) -> bool:
    """Replace an image by a valid one of another size, mode or format."""
    try:
        with Image.open(path) as img:
            original = img.convert("RGB")
    except Exception:  # already damaged (PIL raises several types)
        return False
    how = data.draw(st.sampled_from(["resize", "mode", "format"]), label="image edit")
    fmt = "PNG" if path.suffix == ".png" else "JPEG"
    if how == "resize":
        out = original.resize(data.draw(st.tuples(st.integers(1, 40), st.integers(1, 40)), label="size"))
    elif how == "mode":
        modes = ["L", "CMYK", "1"] if fmt == "JPEG" else ["L", "RGBA", "P", "1", "I;16"]
        out = original.convert(data.draw(st.sampled_from(modes), label="mode"))
    else:
        out, fmt = original, "JPEG" if fmt == "PNG" else "PNG"
    if fmt == "JPEG" and out.mode == "1":
        out = out.convert("L")
    buf = io.BytesIO()
    out.save(buf, format=fmt)
    _replace(path, buf.getvalue())
    return True


_BYTES: tuple[Callable, ...] = (_bytes_truncate, _bytes_flip, _bytes_flip, _bytes_delete, _bytes_empty, _bytes_garbage)
_STRUCTURED = {".mat": _mat_edit, ".json": _json_edit, ".txt": _text_edit, ".cal": _text_edit, ".npz": _npz_edit,
               ".jpg": _image_edit, ".png": _image_edit}  # fmt: skip


def _corruptions(path: Path) -> tuple[Callable, ...]:
    """Byte-level damage for every file, plus the format-aware edits (weighted up, the more so for
    JSON, where almost any byte-level damage is a parse error: the edits are what gets past the
    parsers into the validation code)."""
    structured = _STRUCTURED[path.suffix]
    return (*_BYTES, *[structured] * (12 if path.suffix == ".json" else 3))


# ------------------------------------------------------------------------------ formats
@dataclass(frozen=True)
class Format:
    """One raw format: the dataset to ingest, the folder it lives in, the files a corruption may
    hit, and how to count the units the (corrupted) files still hold."""

    dataset: str
    folder: str
    patterns: tuple[str, ...]
    expected: Callable[[Path], set[str] | int]


def _stems(root: Path, pattern: str, suffixes: tuple[str, ...]) -> set[str]:
    return {
        p.relative_to(root).as_posix()[: -len(s)]
        for p in root.glob(pattern)
        for s in suffixes
        if p.name.endswith(s) and p.is_file()
    }


def _npz_rows(root: Path) -> set[str]:
    with np.load(root / "BIWI_noTrack.npz", allow_pickle=False) as z:
        return {f"BIWI_noTrack.npz#{i:05d}" for i in range(len(z["image"]))}


def _annotation_count(files: tuple[str, ...]) -> Callable[[Path], int]:
    def count(root: Path) -> int:
        return sum(len(json.loads((root / f).read_bytes())["annotations"]) for f in files)

    return count


FORMATS = {
    f.dataset: f
    for f in (
        Format("300w_lp", "300w_lp", ("*/*.jpg", "*/*.mat"), lambda r: _stems(r, "*/*", (".jpg", ".mat"))),
        Format("aflw2000", "aflw2000", ("*.jpg", "*.mat"), lambda r: _stems(r, "*", (".jpg", ".mat"))),
        Format(
            "biwi_hpdb",
            "biwi",
            ("hpdb/*/*_rgb.png", "hpdb/*/*_pose.txt", "hpdb/*/rgb.cal"),
            lambda r: _stems(r, "hpdb/*/*", ("_rgb.png", "_pose.txt")),
        ),
        Format("biwi_npz", "biwi", ("BIWI_noTrack.npz",), _npz_rows),
        Format("coco", "coco", (*_COCO_JSON, "*2017/*.jpg"), _annotation_count(_COCO_JSON)),
        Format("humanart", "humanart", (*_HUMANART_JSON, "images/*/*/*.jpg"), _annotation_count(_HUMANART_JSON)),
    )
}


# ----------------------------------------------------------------------------- property
def _names_a_file(message: str, raw: Path, files: list[str]) -> bool:
    return str(raw) in message or any(f in message or Path(f).name in message for f in files)


def _check_success(summary, fmt: Format, raw: Path, out: Path) -> None:
    assert summary.counts_in == summary.kept + summary.filtered + summary.quarantined
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    for row in quarantine:
        assert row["file"] and row["field"] and row["reason"], row
        assert row["field"] != "<unexpected>", f"a reader crashed instead of naming the problem: {row}"
    expected = fmt.expected(raw)
    if isinstance(expected, int):
        assert summary.counts_in == expected, "an annotation in the file is neither kept, filtered nor quarantined"
    else:  # head pose: each listed sample exactly once, by name
        kept = read_records(out).column("source_id").to_pylist() if summary.kept else []
        filtered = pq.read_table(out / "filtered.parquet").column("source_id").to_pylist()
        seen = kept + filtered + [r["source_id"] for r in quarantine]
        assert sorted(seen) == sorted(expected), "a sample on disk is missing from kept + filtered + quarantined"
    if summary.kept:
        table = read_records(out)
        for name in table.column_names:
            if name.endswith("_jpeg"):
                continue
            for value in table.column(name).to_pylist():
                flat = value if isinstance(value, list) else [value]
                assert all(not isinstance(v, float) or math.isfinite(v) for v in flat or []), (name, value)


@pytest.mark.parametrize("dataset", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_corrupted_input_is_quarantined_or_a_clear_error(pristine, tmp_path_factory, dataset, data):
    fmt = FORMATS[dataset]
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        raw = work / fmt.folder
        shutil.copytree(pristine / fmt.folder, raw, copy_function=os.link)
        files = sorted({p.relative_to(raw).as_posix() for pat in fmt.patterns for p in raw.glob(pat)})
        for _ in range(data.draw(st.integers(1, 3), label="corruptions")):
            rel = data.draw(st.sampled_from(files), label="file")
            if not (raw / rel).is_file():
                continue  # deleted by an earlier corruption
            corrupt = data.draw(st.sampled_from(_corruptions(raw / rel)), label="how")
            if not corrupt(raw / rel, data):
                _bytes_flip(raw / rel, data)
        out = work / "out"
        try:
            summary = ingest(
                dataset, raw, out, seed=PARAMS.seed, crop_margin=(0.2, 0.4), settings=SETTINGS, engine="local"
            )
        except (LayoutError, IngestError, ValueError) as err:  # LayoutError is a ValueError; others propagate
            event(f"error: {type(err).__name__}")
            assert _names_a_file(str(err), raw, files), f"{type(err).__name__} names no file: {err}"
            assert not out.exists(), "a failed ingest left output behind"
            return
        event(f"ingested: {'some' if summary.quarantined else 'none'} quarantined")
        _check_success(summary, fmt, raw, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# What the search above found, kept as fixed examples (each crashed or lost data before its fix)
# ------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
_LOAD_MAT = """
import sys
from pathlib import Path
from pipeline.datasets._common import load_mat
from pipeline.datasets.base import BadRecord
try:
    load_mat(Path(sys.argv[1]), "x.mat")
except BadRecord as err:
    print(err.field, err.reason)
"""


@pytest.mark.parametrize("damage", ["type_code", "complex_flag"])
def test_mat_that_would_segfault_scipy_is_a_bad_record(pristine, tmp_path, damage):
    """scipy/scipy#25349: scipy indexes its dtype table with the file's type code unchecked."""
    raw = bytearray(next((pristine / "300w_lp" / "AFW").glob("*.mat")).read_bytes())
    assert raw[126:128] == b"IM"  # little-endian, as the writer makes it here
    if damage == "type_code":  # Pose_Para's data element: type 0xF4 is no miXXX code
        raw[raw.index(b"Pose_Para") + 16] = 0xF4
    else:  # Pose_Para's flags say complex: scipy reads the next variable's miMATRIX tag as numbers
        raw[128 + 16 + 1] |= 0x08
    path = tmp_path / "bad.mat"
    path.write_bytes(bytes(raw))
    # In a child process: were the guard broken, the crash would take this test run down with it.
    run = subprocess.run(
        [sys.executable, "-c", _LOAD_MAT, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"load_mat crashed (return code {run.returncode}): {run.stderr[-800:]}"
    assert run.stdout.startswith("mat unknown data type code"), run.stdout


def _ingest(dataset: str, raw: Path, out: Path):
    return ingest(dataset, raw, out, seed=PARAMS.seed, crop_margin=(0.2, 0.4), settings=SETTINGS, engine="local")


def _set(doc: dict, path: tuple, value) -> None:
    _at(doc, path[:-1])[path[-1]] = value


def _image_id_beyond_int64(doc: dict) -> None:
    old = doc["images"][0]["id"]
    doc["images"][0]["id"] = 2**63
    for a in doc["annotations"]:
        if a["image_id"] == old:
            a["image_id"] = 2**63


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        # Arrow OverflowError / ArrowInvalid when writing the int64 / int32 columns.
        (_image_id_beyond_int64, "images[0].id"),
        (lambda d: _set(d, ("annotations", 0, "id"), 2**64), "annotations[0].id"),
        # A top-down crop canvas of 10⁹ pixels (MemoryError) or near float max (OverflowError).
        (lambda d: _set(d, ("annotations", 0, "bbox"), [0, 0, 1e9, 10]), "annotations[0].bbox"),
        (lambda d: _set(d, ("annotations", 0, "bbox"), [0, 0, 1e308, 1e308]), "annotations[0].bbox"),
        # A crop box collapsed to a point: division by zero, NaN crop keypoints kept.
        (lambda d: _set(d, ("annotations", 0, "bbox"), [10, 10, 5e-324, 5e-324]), "annotations[0].bbox"),
        # Finite in JSON, inf in the float32 Parquet columns.
        (lambda d: _set(d, ("annotations", 0, "keypoints", 0), 1e300), "annotations[0].keypoints"),
        (lambda d: _set(d, ("annotations", 0, "area"), 1e300), "annotations[0].area"),
        # num_keypoints out of 0..17: recounted from the visibility flags (it overflowed int32).
        (lambda d: _set(d, ("annotations", 0, "num_keypoints"), 2**40), None),
    ],
)
def test_coco_values_that_crashed_or_overflowed(pristine, tmp_path, edit, field):
    raw = tmp_path / "coco"
    shutil.copytree(pristine / "coco", raw)
    ann = raw / _COCO_JSON[1]
    doc = json.loads(ann.read_text())
    edit(doc)
    ann.write_text(json.dumps(doc))
    summary = _ingest("coco", raw, tmp_path / "out")
    _check_success(summary, FORMATS["coco"], raw, tmp_path / "out")
    fields = pq.read_table(tmp_path / "out" / "quarantine.parquet").column("field").to_pylist()
    assert sorted(set(fields)) == ([field] if field else [])  # every annotation of an unusable image


@pytest.mark.parametrize("dtype", ["U8", "complex128"])
def test_npz_pose_of_text_or_complex_is_a_layout_error(pristine, tmp_path, dtype):
    """Text poses were parsed as numbers, complex ones lost their imaginary part."""
    raw = tmp_path / "biwi"
    raw.mkdir()
    with np.load(pristine / "biwi" / "BIWI_noTrack.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["pose"] = arrays["pose"].astype(dtype)
    np.savez(raw / "BIWI_noTrack.npz", **arrays)
    with pytest.raises(LayoutError, match=f"BIWI_noTrack.npz: pose is {np.dtype(dtype)}"):
        _ingest("biwi_npz", raw, tmp_path / "out")


def test_complex_pose_para_is_quarantined(pristine, tmp_path):
    """A complex Pose_Para silently lost its imaginary part."""
    raw = tmp_path / "aflw2000"
    shutil.copytree(pristine / "aflw2000", raw)
    mat_path = sorted(raw.glob("*.mat"))[0]
    mat = {k: v for k, v in scipy.io.loadmat(str(mat_path)).items() if not k.startswith("__")}
    mat["Pose_Para"] = mat["Pose_Para"] + 1j
    scipy.io.savemat(str(mat_path), mat)
    summary = _ingest("aflw2000", raw, tmp_path / "out")
    (row,) = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert (row["file"], row["field"]) == (mat_path.name, "Pose_Para") and "complex" in row["reason"]
    assert summary.quarantined == 1
