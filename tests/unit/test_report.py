"""The report renders from a small fixed metrics set: every candidate, the published rows marked
as published, the figures, findings computed from the numbers."""

from __future__ import annotations

import json

from pipeline import layout
from pipeline.report import candidate_records, collect, keypoint_records, render


def _sets(mae_a, mae_b, inv=0.0):
    def one(m):
        return {
            "n": 10,
            "invalid_rate": inv,
            "mae_yaw": m,
            "mae_pitch": m + 1,
            "mae_roll": m - 1,
            "mae": m,
            "maev": m,
            "by_yaw_bin": [{"bin": "0-15", "n": 5, "mae": m - 1}, {"bin": "15-30", "n": 5, "mae": m + 1}],
        }

    # In-domain (held-out 300W-LP) a little better than cross-dataset; blank images at 26°.
    return {"300w_lp": one(mae_a - 1), "aflw2000": one(mae_a), "biwi_hpdb": one(mae_b), "300w_lp_blank": one(26.0)}


CHANCE = {"answer": {"yaw": 0.0, "pitch": 0.0, "roll": 0.0}, **_sets(30.0, 32.0)}
CHANCE.pop("300w_lp_blank")
CHANCE["300w_lp"] = {**CHANCE["300w_lp"], "mae": 25.0}


def _row(name, kind, a, b, g, inv=0.0):
    return {
        "candidate": name,
        "kind": kind,
        "mean_mae": (a + b) / 2,
        "grounding/acc_iou50": g,
        "grounding/mean_iou": g,
        "grounding/invalid_rate": 0.0,
        **{f"{s}/{k}": v for s, m in _sets(a, b, inv).items() for k, v in m.items() if k != "by_yaw_bin"},
    }


def _write_metrics(root, baseline=(12.0, 14.0)):
    rows = [
        _row("base", "base", 30.0, 32.0, 0.9),
        _row("lora:hpe", "lora", 10.0, 12.0, 0.2),
        _row("merge:layer_wta", "merged", 9.0, 11.0, 0.85),
        _row("merge:ties", "merged", 20.0, 21.0, 0.8, 0.5),
    ]
    (root / layout.evaluation_table()).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.evaluation_table()).write_text(json.dumps({"candidates": rows, "chance": CHANCE}))
    (root / layout.eval_metrics_dir()).mkdir(exist_ok=True)
    for r in rows:
        a, b = r["aflw2000/mae"], r["biwi_hpdb/mae"]
        (root / layout.eval_metrics_dir() / f"{r['candidate'].replace(':', '-')}.json").write_text(
            json.dumps({"candidate": r["candidate"], "kind": r["kind"], **_sets(a, b, r["aflw2000/invalid_rate"])})
        )
    (root / layout.baseline_metrics()).write_text(
        json.dumps(
            {"baseline": "6drepnet", "backbone": "small_cnn", "steps": 10, "final_loss": 0.1, "test": _sets(*baseline)}
        )
    )
    merged = root / layout.merged_out("layer_wta")
    merged.mkdir(parents=True, exist_ok=True)
    (merged / "merge_decisions.json").write_text(
        json.dumps(
            {
                "method": "layer_wta",
                "params": {"threshold": 0.9},
                "decisions": [
                    {"group": "model.layers.0.q_proj", "action": "combine", "similarity": 0.95, "winner": None},
                    {"group": "model.layers.0.v_proj", "action": "winner", "similarity": 0.1, "winner": 0},
                ],
            }
        )
    )
    (root / layout.curve("pretrain_base")).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.curve("pretrain_base")).write_text(json.dumps([{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.0}]))
    (root / layout.registry_out()).parent.mkdir(parents=True, exist_ok=True)
    (root / layout.registry_out()).write_text(
        json.dumps(
            {
                "model_name": "hpe-vlm",
                "champion": "1",
                "decisions": [{"candidate": "merge:layer_wta", "version": "1", "promoted": True, "reason": "first"}],
            }
        )
    )


def test_report_renders_every_candidate_and_marks_published_rows(tmp_path):
    _write_metrics(tmp_path)
    inputs = collect(tmp_path)
    md_path = render(inputs, tmp_path / "reports", grounding_tolerance=0.1, notes=["Embedded default."])
    md = md_path.read_text()
    for name in ("base", "lora:hpe", "merge:layer_wta", "merge:ties", "6drepnet (CNN baseline)"):
        assert f"| {name} |" in md
    assert "| *6DRepNet (published)* | — | *3.63* | *4.91* | *3.37* | *3.97* | *3.24* | *4.48* | *2.68* | *3.47*" in md
    # The yardsticks: a chance row, the in-domain column, MAE / chance and the blank-image MAE.
    assert "| chance (training median) | **25.00** | 30.00 | 31.00 | 29.00 | **30.00** |" in md
    assert (
        "| merge:layer_wta | **8.00** | 9.00 | 10.00 | 8.00 | **9.00** | 11.00 | 12.00 | 10.00 | **11.00** | 10.00 | 0.30 / 0.34 | 26.00 |"
        in md
    )
    # Findings are computed: chance ratios, best learnt candidate, its change against the learnt
    # baseline, the blank-image ablation, grounding kept/lost, invalid answers, the paper's claim.
    assert "Chance (always the training median): 300W-LP held-out 25.00°, AFLW2000 30.00°, BIWI 32.00°." in md
    assert "base: MAE / chance 300W-LP held-out 1.16×, AFLW2000 1.00×, BIWI 1.00×: **not clearly below chance**" in md
    assert (
        "Lowest mean cross-dataset MAE among learnt models (at most 5% invalid answers): **merge:layer_wta** (10.00°)"
        in md
    )
    assert "23.1% lower mean MAE (10.00° vs 13.00°)" in md
    assert (
        "merge:layer_wta on blank images: MAE 26.00° vs 8.00° on the real held-out frames (chance 25.00°): its answers depend on the image."
        in md
    )
    assert (
        "base on blank images: MAE 26.00° vs 29.00° on the real held-out frames (chance 25.00°): **its answers do not depend on the image** (blank frames score as well)."
        in md
    )
    assert "lora:hpe lost grounding: acc@0.5 0.20 vs base 0.90 (22% of base)" in md
    assert "merge:layer_wta kept grounding: acc@0.5 0.85 vs base 0.90 (94% of base)" in md
    assert "merge:ties gives invalid head-pose answers on 50%" in md
    assert (
        "Paper's claim (layer_wta has the lowest error of the adapters it merges): reproduced: layer_wta 10.00° vs lora:hpe 11.00°."
        in md
    )
    figures = sorted(p.name for p in (tmp_path / "reports" / "figures").glob("*.png"))
    assert figures == [
        "grounding_vs_headpose.png",
        "invalid_answers.png",
        "layer_wta_decisions.png",
        "mae_by_yaw_bin.png",
        "training_curves.png",
    ]
    for f in figures:
        assert f"figures/{f}" in md
    assert "| merge:layer_wta | 1 | yes | first |" in md


def test_report_draws_no_comparison_with_a_model_at_chance(tmp_path):
    """A baseline at chance is not compared with the VLMs, however the MAEs rank."""
    _write_metrics(tmp_path, baseline=(29.0, 33.0))
    md = render(collect(tmp_path), tmp_path / "reports", grounding_tolerance=0.1).read_text()
    assert "vs the CNN baseline" not in md
    assert "No VLM-vs-baseline comparison: 6drepnet (CNN baseline) is not clearly below chance." in md


def test_report_needs_the_evaluation_table(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="evaluation.json"):
        collect(tmp_path)


def test_keypoint_section_compares_the_three_pose_models(tmp_path):
    _write_metrics(tmp_path)
    stats = {"AP": None, "AP50": None, "AP75": None, "AR": None}

    def doc(coco, humanart):
        return {
            "domains": {"coco": {**stats, "AP": coco}, "humanart": {**stats, "AP": humanart}},
            "scenes": {"sketch": {**stats, "AP": humanart / 2}, "cartoon": {**stats, "AP": None}},
        }

    pose = tmp_path / layout.pose_metrics_dir()
    pose.mkdir(parents=True, exist_ok=True)
    models = (("original", 0.30, 0.10), ("finetuned", 0.28, 0.20), ("vlpose", 0.31, 0.25), ("mean_pose", 0.01, 0.02))
    for name, coco, art in models:
        (pose / f"{name}.json").write_text(json.dumps(doc(coco, art)))
    md = render(collect(tmp_path), tmp_path / "reports").read_text()
    section = md[md.index("## Keypoints") :]
    for row in ("| original | 30.00 | 10.00 |", "| finetuned | 28.00 | 20.00 |", "| vlpose | 31.00 | 25.00 |"):
        assert row in section
    assert "*VLPose-B (published)*" in section or "(published)*" in section
    assert "VLPose humanart AP 25.00 is above the fine-tuned ViTPose's 20.00 (by 5.00 AP points)." in md
    assert "original: coco AP 30.00 vs mean pose 1.00; humanart AP 10.00 vs mean pose 2.00." in md
    assert "| mean_pose | 1.00 | 2.00 |" in section  # the yardstick's row in the table
    assert "VLPose coco AP 31.00 is above the fine-tuned ViTPose's 28.00 (by 3.00 AP points)." in md
    assert (tmp_path / "reports" / "figures" / "keypoint_ap_by_scene.png").stat().st_size > 0


def _write_pose_metrics(root):
    stats = {"AP": 0.5, "AP50": 0.75, "AP75": 0.25, "AR": 0.6}
    pose = root / layout.pose_metrics_dir()
    pose.mkdir(parents=True, exist_ok=True)
    for name in ("original", "vlpose"):
        doc = {"domains": {"coco": stats, "humanart": {**stats, "AP": None}}, "scenes": {"sketch": stats}}
        if name == "vlpose":
            doc["detected"] = {"domains": {"coco": {**stats, "AP": 0.4}}}
        (pose / f"{name}.json").write_text(json.dumps(doc))


def test_result_records_hold_every_row_of_the_report_tables(tmp_path):
    """The Prefect table artifacts come from these: the baseline and the published rows are in."""
    _write_metrics(tmp_path)
    _write_pose_metrics(tmp_path)
    inputs = collect(tmp_path)
    recs = {r["candidate"]: r for r in candidate_records(inputs)}
    assert list(recs) == ["base", "lora:hpe", "merge:layer_wta", "merge:ties", "6drepnet (CNN baseline)",
                          "chance (training median)", "6DRepNet (published)"]  # fmt: skip
    assert recs["merge:ties"] == {
        "candidate": "merge:ties", "kind": "merged", "300W-LP held-out MAE": 19.0, "AFLW2000 MAE": 20.0,
        "AFLW2000 × chance": 0.67, "AFLW2000 invalid %": 50.0, "BIWI MAE": 21.0, "BIWI × chance": 0.66,
        "BIWI invalid %": 50.0, "mean MAE": 20.5, "blank-image MAE": 26.0, "grounding acc@0.5": 0.8,
    }  # fmt: skip
    assert (
        recs["chance (training median)"]["AFLW2000 MAE"] == 30.0
        and recs["chance (training median)"]["kind"] == "chance"
    )
    assert recs["6drepnet (CNN baseline)"]["mean MAE"] == 13.0 and recs["6drepnet (CNN baseline)"]["kind"] == "baseline"
    assert recs["6DRepNet (published)"]["kind"] == "published" and recs["6DRepNet (published)"]["mean MAE"] == 3.72

    kp = keypoint_records(inputs.keypoints)
    assert {"model": "vlpose", "domain": "coco", "boxes": "detected", "AP": 40.0, "AP50": 75.0, "AP75": 25.0,
            "AR": 60.0} in kp  # fmt: skip
    assert {"model": "original", "domain": "humanart", "boxes": "ground truth", "AP": None, "AP50": 75.0,
            "AP75": 25.0, "AR": 60.0} in kp  # fmt: skip
    assert len(kp) == 5
    md = render(inputs, tmp_path / "reports").read_text()
    assert "| vlpose | coco | detected | 40.00 | 75.00 | 25.00 | 60.00 |" in md
