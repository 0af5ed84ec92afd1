"""Ingestion: raw synthetic datasets → Parquet; ground truth recovered; bad input quarantined."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io
import yaml

from pipeline.config import parse_params
from pipeline.datasets.base import LayoutError
from pipeline.geometry import biwi_matrix_to_euler
from pipeline.imaging import decode_jpeg
from pipeline.ingest import IngestError, ingest, read_records
from pipeline.records.headpose import SCHEMA, expand_box, square_box
from tests.conftest import subprocess_env, tiny_params_dict

PARAMS = parse_params(tiny_params_dict())
SETTINGS = PARAMS.ingest.model_dump(exclude={"datasets"})


def _ingest(name, raw, out, **overrides):
    cfg = PARAMS.ingest.dataset(name)
    settings = {**SETTINGS, **overrides.pop("settings", {})}
    return ingest(
        name,
        raw,
        out,
        seed=PARAMS.seed,
        crop_margin=overrides.pop("crop_margin", cfg.crop_margin),
        settings=settings,
        engine=overrides.pop("engine", "local"),
    )


def _mat_truth(path: Path):
    mat = scipy.io.loadmat(path)
    pitch, yaw, roll = np.rad2deg(mat["Pose_Para"][0][:3])
    pts = mat["pt2d"] if "pt2d" in mat else mat["pt3d_68"][:2]
    return (yaw, pitch, roll), np.asarray(pts, dtype=np.float64).T


def test_300w_lp_round_trip(synthetic_raw, tmp_path):
    raw = synthetic_raw / "300w_lp"
    summary = _ingest("300w_lp", raw, tmp_path / "out")
    table = read_records(tmp_path / "out")
    assert summary.counts_in == summary.kept == table.num_rows == 24
    assert table.schema.remove_metadata() == SCHEMA
    meta = pq.read_metadata(next((tmp_path / "out" / "train").glob("*.parquet"))).metadata
    assert meta[b"hpe.schema_version"] == b"1" and meta[b"hpe.schema"] == b"headpose"

    rows = {r["source_id"]: r for r in table.to_pylist()}
    for sid, row in rows.items():
        (yaw, pitch, roll), lm = _mat_truth(raw / f"{sid}.mat")
        assert abs(row["yaw"] - yaw) < 0.01 and abs(row["pitch"] - pitch) < 0.01 and abs(row["roll"] - roll) < 0.01
        assert np.allclose(np.reshape(row["landmarks"], (68, 2)), lm, atol=1e-3)
        assert row["split"] == "train" and row["flip"] == sid.split("/")[0].endswith("_Flip")
        k = row["crop_margin"]
        assert 0.2 <= k <= 0.4
        box = (lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max())
        x0, y0, x1, y1 = row["crop_box"]
        assert np.allclose(row["crop_box"], square_box(expand_box(box, k)), atol=1e-3)
        assert abs((x1 - x0) - (y1 - y0)) < 1e-3  # square: faces are not stretched
        assert decode_jpeg(row["face_jpeg"]).shape == (PARAMS.ingest.crop_size,) * 2 + (3,)
        frame = decode_jpeg(row["frame_jpeg"])
        assert frame.shape == (row["frame_height"], row["frame_width"], 3)
        assert max(frame.shape[:2]) == PARAMS.ingest.frame_size
        hx0, hy0, hx1, hy1 = row["head_box"]
        assert 0 <= hx0 < hx1 <= row["frame_width"] and 0 <= hy0 < hy1 <= row["frame_height"]
    # Flip twins: same name under SUBSET_Flip, yaw and roll negated, pitch kept.
    twins = [(sid, sid.replace("/", "_Flip/", 1)) for sid in rows if not sid.split("/")[0].endswith("_Flip")]
    assert len(twins) == 12
    for a, b in twins:
        assert rows[a]["yaw"] == pytest.approx(-rows[b]["yaw"], abs=0.01)
        assert rows[a]["roll"] == pytest.approx(-rows[b]["roll"], abs=0.01)
        assert rows[a]["pitch"] == pytest.approx(rows[b]["pitch"], abs=0.01)


def test_aflw2000_drops_beyond_99_degrees(synthetic_raw, tmp_path):
    raw = synthetic_raw / "aflw2000"
    summary = _ingest("aflw2000", raw, tmp_path / "out")
    truth = {p.with_suffix("").name: _mat_truth(p)[0] for p in raw.glob("*.mat")}
    beyond = {sid for sid, angles in truth.items() if max(abs(a) for a in angles) > 99}
    assert beyond, "the synthetic AFLW2000 must exercise the filter"
    assert summary.filtered == len(beyond) and summary.kept == len(truth) - len(beyond)
    filtered = pq.read_table(tmp_path / "out" / "filtered.parquet").column("source_id").to_pylist()
    assert set(filtered) == beyond
    kept = read_records(tmp_path / "out", "test")
    assert max(abs(v) for c in ("yaw", "pitch", "roll") for v in kept.column(c).to_pylist()) <= 99
    for row in kept.to_pylist():
        (yaw, pitch, roll), _ = _mat_truth(raw / f"{row['source_id']}.mat")
        assert abs(row["yaw"] - yaw) < 0.01 and abs(row["roll"] - roll) < 0.01
        assert row["crop_margin"] == pytest.approx(0.2)


def test_biwi_hpdb_and_npz_agree(synthetic_raw, tmp_path):
    raw = synthetic_raw / "biwi"
    _ingest("biwi_hpdb", raw, tmp_path / "hp")
    _ingest("biwi_npz", raw, tmp_path / "npz")
    hp, npz = read_records(tmp_path / "hp"), read_records(tmp_path / "npz")
    assert hp.num_rows == npz.num_rows == 8
    for row in hp.to_pylist():
        lines = (raw / f"{row['source_id']}_pose.txt").read_text().split("\n")
        M = np.array([[float(v) for v in lines[i].split()] for i in range(3)])
        yaw, pitch, roll = biwi_matrix_to_euler(M)
        assert abs(row["yaw"] - yaw) < 0.01 and abs(row["pitch"] - pitch) < 0.01 and abs(row["roll"] - roll) < 0.01
        assert row["landmarks"] is None
    # Same frames, same order of writing: the npz poses are the hpdb poses.
    assert sorted(np.round(hp.column("yaw").to_numpy(), 2)) == pytest.approx(
        sorted(np.round(npz.column("yaw").to_numpy(), 2)), abs=0.02
    )
    assert set(npz.column("frame_width").to_pylist()) == {PARAMS.ingest.frame_size}


@pytest.fixture()
def broken_300w_lp(synthetic_raw, tmp_path) -> tuple[Path, dict[str, str]]:
    """A copy of the tiny 300W-LP with one record broken per bad-input case."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw / "300w_lp", raw)
    stems = sorted(p.relative_to(raw).with_suffix("").as_posix() for p in raw.glob("*/*.mat"))
    cases = dict(
        zip(
            [
                "truncated_mat",
                "missing_mat",
                "missing_jpg",
                "corrupt_jpg",
                "nan_angle",
                "out_of_range",
                "box_outside",
                "truncated_jpg",
            ],
            stems[::3],
            strict=False,
        )
    )
    mat = raw / f"{cases['truncated_mat']}.mat"
    mat.write_bytes(mat.read_bytes()[:120])
    (raw / f"{cases['missing_mat']}.mat").unlink()
    (raw / f"{cases['missing_jpg']}.jpg").unlink()
    (raw / f"{cases['corrupt_jpg']}.jpg").write_bytes(b"this is not a jpeg at all")
    jpg = raw / f"{cases['truncated_jpg']}.jpg"
    jpg.write_bytes(jpg.read_bytes()[:2000])
    for case, edit in (("nan_angle", ("Pose_Para", 1, np.nan)), ("out_of_range", ("Pose_Para", 1, 4.0))):
        path = raw / f"{cases[case]}.mat"
        m = scipy.io.loadmat(path)
        m["Pose_Para"][0, edit[1]] = edit[2]
        scipy.io.savemat(path, {k: v for k, v in m.items() if not k.startswith("__")})
    path = raw / f"{cases['box_outside']}.mat"
    m = scipy.io.loadmat(path)
    m["pt2d"] = m["pt2d"] + 2000.0
    scipy.io.savemat(path, {k: v for k, v in m.items() if not k.startswith("__")})
    return raw, cases


def test_every_bad_input_is_quarantined_with_file_and_field(broken_300w_lp, tmp_path):
    raw, cases = broken_300w_lp
    summary = _ingest("300w_lp", raw, tmp_path / "out", settings={"error_budget": 1.0})
    assert summary.counts_in == 24 == summary.kept + summary.filtered + summary.quarantined
    assert summary.quarantined == len(cases)
    q = {r["source_id"]: r for r in pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()}
    assert set(q) == set(cases.values())
    expect = {
        "truncated_mat": (".mat", None),
        "missing_mat": (".mat", None),
        "missing_jpg": (".jpg", None),
        "corrupt_jpg": (".jpg", None),
        "truncated_jpg": (".jpg", None),
        "nan_angle": (".mat", "Pose_Para"),
        "out_of_range": (None, "yaw"),
        "box_outside": (None, "face_box"),
    }
    for case, sid in cases.items():
        suffix, field = expect[case]
        row = q[sid]
        assert row["reason"] and row["field"], row
        if suffix:
            assert row["file"].endswith(suffix) and Path(sid).name in row["file"], (case, row)
        if field:
            assert row["field"] == field, (case, row)
    kept = set(read_records(tmp_path / "out").column("source_id").to_pylist())
    assert not kept & set(cases.values())


def test_error_budget_fails_clearly_and_writes_nothing(broken_300w_lp, tmp_path):
    raw, cases = broken_300w_lp
    with pytest.raises(IngestError) as err:
        _ingest("300w_lp", raw, tmp_path / "out", settings={"error_budget": 0.1})
    msg = str(err.value)
    assert "error budget" in msg and "ingest.error_budget" in msg and "8 of 24" in msg
    assert any(Path(sid).name in msg for sid in cases.values())
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_wrong_directory_is_a_layout_error(synthetic_raw, tmp_path):
    with pytest.raises(LayoutError):
        _ingest("300w_lp", synthetic_raw / "biwi", tmp_path / "out")
    with pytest.raises(LayoutError):
        _ingest("biwi_hpdb", tmp_path, tmp_path / "out")


def test_same_seed_same_bytes_and_rewrite_is_atomic(synthetic_raw, tmp_path):
    raw = synthetic_raw / "aflw2000"
    _ingest("aflw2000", raw, tmp_path / "a")
    _ingest("aflw2000", raw, tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    _ingest("aflw2000", raw, tmp_path / "a")  # replaces in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_cli_ingest_biwi_alias_and_clear_errors(synthetic_raw, tmp_path):
    params = tiny_params_dict()
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = subprocess_env()

    def hpe(*args):
        return subprocess.run(
            ["hpe", *args, "--params", str(tmp_path / "params.yaml")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    ok = hpe(
        "ingest", "biwi", "--raw-root", str(synthetic_raw / "biwi"), "--out", str(tmp_path / "o"), "--engine", "local"
    )
    assert ok.returncode == 0, ok.stderr
    assert '"dataset": "biwi_hpdb"' in ok.stdout
    ok = hpe(
        "ingest",
        "biwi",
        "--raw-root",
        str(synthetic_raw / "biwi" / "BIWI_noTrack.npz"),
        "--out",
        str(tmp_path / "n"),
        "--engine",
        "local",
    )
    assert ok.returncode == 0 and '"dataset": "biwi_npz"' in ok.stdout, ok.stderr
    bad = hpe("ingest", "aflw2000", "--raw-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "nowhere" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = hpe("ingest", "nosuch", "--raw-root", str(tmp_path), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "valid: 300w_lp" in bad.stderr
