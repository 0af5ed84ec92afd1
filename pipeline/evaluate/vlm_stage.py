"""The ``evaluate`` stage: every VLM candidate on the cross-dataset head-pose sets and on grounding.

Candidates: the base VLM, each LoRA adapter on it, each merged model. Each is asked
the head pose of every face in the test sets (trained on 300W-LP, tested on AFLW2000 and BIWI:
cross-dataset) and the box of the head on held-out 300W-LP frames (does it still ground?).

Beside the cross-dataset sets every candidate is scored in-domain (held-out 300W-LP frames)
and on the same frames blanked, and the chance predictor's scores are written with the table
(:mod:`pipeline.evaluate.yardsticks`).

Outputs: ``metrics/eval/<candidate>.json`` per candidate, ``metrics/evaluation.json`` (the
table of all of them and ``chance``, for ``dvc metrics show/diff``), and the invalid answers kept verbatim in
``reports/invalid_answers/<candidate>.jsonl`` for inspection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import layout
from pipeline.atomic import write_json_atomic
from pipeline.config import Params
from pipeline.evaluate.headpose import headpose_metrics, mae_by_bin
from pipeline.evaluate.vlm_answers import grounding_scores, mean_relative_box
from pipeline.evaluate.vlm_batch import Candidate, answer_questions
from pipeline.evaluate.yardsticks import BLANK_SUFFIX, IN_DOMAIN, blank_frames, chance_scores
from pipeline.ingest import read_records
from pipeline.vlm.families import get_family

ROW_COLUMNS = ("source_id", "frame_jpeg", "frame_width", "frame_height", "head_box", "yaw", "pitch", "roll")
GROUNDING_SET = "grounding"


def slug(name: str) -> str:
    """A file-name-safe form of a candidate name (``lora:hpe`` → ``lora-hpe``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def candidates(params: Params, base: Path, adapters: Path | None, merged: Path | None) -> list[Candidate]:
    """Base, then every configured LoRA adapter, then every configured merge method.

    Raises:
        FileNotFoundError: naming the folder of a configured candidate that was not produced.
    """
    from pipeline.vlm.stages import resolve_base

    base_dir = str(resolve_base(base).resolve())
    out = [Candidate("base", "base", base_dir)]
    if adapters is not None:
        out += [Candidate(f"lora:{n}", "lora", base_dir, str((adapters / n).resolve())) for n in params.lora.adapters]
    if merged is not None:
        out += [Candidate(f"merge:{m}", "merged", str((merged / m).resolve())) for m in params.merge.methods]
    for c in out:
        for folder in filter(None, (c.model_dir, c.adapter_dir)):
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{folder}: candidate {c.name} has no model folder (run its stage first)")
    return out


def first_rows(table: pa.Table, n: int | None) -> pa.Table:
    """The first ``n`` rows by ``source_id`` (all when ``n`` is None): the same subset every run."""
    table = table.sort_by("source_id")  # a stable subset, whatever the shard order
    return table if n is None else table.slice(0, n)


def headpose_test_sets(params: Params, parquet_root: Path = layout.PARQUET) -> dict[str, pa.Table]:
    """The cross-dataset test sets every candidate (and the CNN baseline) is scored on."""
    return {
        name: first_rows(read_records(parquet_root / name, "test"), params.evaluate.rows_per_set)
        for name in params.evaluate.headpose_sets
    }


def scored_sets(params: Params, heldout: pa.Table, parquet_root: Path = layout.PARQUET) -> dict[str, pa.Table]:
    """Every head-pose set a model is scored on: the in-domain held-out rows, then the test sets."""
    return {IN_DOMAIN: first_rows(heldout, params.evaluate.rows_per_set), **headpose_test_sets(params, parquet_root)}


def question_table(params: Params, parquet_root: Path = layout.PARQUET) -> pa.Table:
    """Every question of the evaluation: head pose on the held-out 300W-LP frames (in-domain),
    on each cross-dataset test set and on the held-out frames blanked (image ablation);
    grounding on held-out crops."""
    from pipeline.vlm.stages import grounding_rows, heldout_crops

    parts = []
    _, heldout = grounding_rows(params, parquet_root)
    for name, rows in scored_sets(params, heldout, parquet_root).items():
        parts.append((rows.select(ROW_COLUMNS), "headpose", name))
    in_domain = parts[0][0]
    # The image ablation: the in-domain questions again, on blank frames.
    parts.append((blank_frames(in_domain), "headpose", IN_DOMAIN + BLANK_SUFFIX))
    crops = heldout_crops(params, heldout.sort_by("source_id"), params.evaluate.grounding_rows)
    parts.append((crops.select(ROW_COLUMNS), "grounding", GROUNDING_SET))
    tables = [
        t.append_column("question", pa.array([q] * t.num_rows, pa.string())).append_column(
            "eval_set", pa.array([s] * t.num_rows, pa.string())
        )
        for t, q, s in parts
    ]
    table = pa.concat_tables(tables)
    return table.append_column("row", pa.array(range(table.num_rows), pa.int64()))


def score(
    questions: pa.Table,
    answers: dict[int, str],
    family_name: str,
    constant_box: tuple[float, float, float, float] | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """Metrics per evaluation set and the invalid answers (pure: no model involved).

    Returns:
        ``({eval_set: metrics}, invalid)``: head-pose sets get ``headpose_metrics`` plus
        ``mae_by_bin``; the grounding set gets IoU scores (invalid → IoU 0) and the
        constant-box baseline; ``invalid`` lists ``{eval_set, source_id, question, answer}``.
    """
    family = get_family(family_name)
    meta = questions.select(
        ["row", "question", "eval_set", "source_id", "frame_width", "frame_height", "head_box", "yaw", "pitch", "roll"]
    ).to_pylist()
    by_set: dict[str, list[dict]] = {}
    for r in meta:
        by_set.setdefault(r["eval_set"], []).append(r)
    metrics: dict[str, Any] = {}
    invalid: list[dict] = []
    for name, rows in by_set.items():
        if rows[0]["question"] == "headpose":
            preds = [family.parse_headpose(answers[r["row"]]) for r in rows]
            true = [(r["yaw"], r["pitch"], r["roll"]) for r in rows]
            metrics[name] = {**headpose_metrics(preds, true), "by_yaw_bin": mae_by_bin(preds, true)}
            bad = [r for r, p in zip(rows, preds, strict=True) if p is None]
        else:
            boxes = [family.parse_grounding(answers[r["row"]], r["frame_width"], r["frame_height"]) for r in rows]
            bad = [r for r, b in zip(rows, boxes, strict=True) if b is None]
            metrics[name] = grounding_scores(
                boxes,
                [r["head_box"] for r in rows],
                [(r["frame_width"], r["frame_height"]) for r in rows],
                constant_box,
            )
        invalid += [
            {"eval_set": name, "source_id": r["source_id"], "question": r["question"], "answer": answers[r["row"]]}
            for r in bad
        ]
    return metrics, invalid


def summary_row(name: str, kind: str, metrics: dict[str, Any], headpose_sets: list[str]) -> dict[str, Any]:
    """One line of the candidates table: per-set MAE (in-domain, cross-dataset), the cross-dataset
    mean, the blank-image MAE, grounding accuracy, invalid rates."""
    row: dict[str, Any] = {"candidate": name, "kind": kind}
    maes = []
    for s in (IN_DOMAIN, *headpose_sets):
        m = metrics[s]
        row.update({f"{s}/{k}": m[k] for k in ("mae_yaw", "mae_pitch", "mae_roll", "mae", "maev", "invalid_rate")})
        if s != IN_DOMAIN:
            maes.append(m["mae"])
    blank = metrics[IN_DOMAIN + BLANK_SUFFIX]
    row.update({f"{IN_DOMAIN}{BLANK_SUFFIX}/{k}": blank[k] for k in ("mae", "invalid_rate")})
    # Mean over the cross-dataset sets only: the in-domain score is a yardstick beside them.
    row["mean_mae"] = None if any(v is None for v in maes) else sum(maes) / len(maes)
    g = metrics[GROUNDING_SET]
    row.update(
        {
            "grounding/acc_iou50": g["acc_iou50"],
            "grounding/mean_iou": g["mean_iou"],
            "grounding/invalid_rate": g["invalid_rate"],
        }
    )
    return row


def evaluation_key(candidate: Candidate, questions: pa.Table, params: Params) -> str:
    """What a candidate's scores depend on: its weights, the questions, how answers are generated."""
    import hashlib

    from pipeline.lineage import dvc_md5

    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, questions.schema) as writer:
        writer.write_table(questions)
    digest.update(sink.getvalue().to_pybytes())
    for folder in filter(None, (candidate.model_dir, candidate.adapter_dir)):
        digest.update(dvc_md5(folder).encode())
    settings = {"family": params.vlm.family, "max_new_tokens": params.evaluate.max_new_tokens, "kind": candidate.kind}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _cached(metrics_file: Path, invalid_file: Path, key: str) -> dict[str, Any] | None:
    if not (metrics_file.is_file() and invalid_file.is_file()):
        return None
    data = json.loads(metrics_file.read_text())
    return data if data.get("evaluation_key") == key else None


def evaluate_vlm(
    params: Params,
    base: Path,
    adapters: Path | None,
    merged: Path | None,
    metrics_dir: Path,
    table_path: Path,
    invalid_dir: Path,
    parquet_root: Path = layout.PARQUET,
) -> dict[str, Any]:
    """Evaluate every candidate; write per-candidate metrics, the table and the invalid answers.

    A candidate whose scores on file were computed from the very same weights, questions and
    generation settings (:func:`evaluation_key`) is not asked again: a threshold sweep of one
    merge method re-evaluates that merge only. Files of candidates no longer configured are removed.

    Returns:
        ``{"rows": [summary_row…], "questions": n, "evaluated": [names], "reused": [names]}``.
    """
    from pipeline.atomic import write_text_atomic
    from pipeline.vlm.stages import grounding_rows

    cfg = params.evaluate
    metrics_dir, invalid_dir = Path(metrics_dir), Path(invalid_dir)
    questions = question_table(params, parquet_root)
    train_rows, heldout = grounding_rows(params, parquet_root)
    constant = mean_relative_box(train_rows.select(["head_box", "frame_width", "frame_height"]).to_pylist())
    rows, evaluated, reused, keep = [], [], [], set()
    for cand in candidates(params, base, adapters, merged):
        metrics_file, invalid_file = metrics_dir / f"{slug(cand.name)}.json", invalid_dir / f"{slug(cand.name)}.jsonl"
        keep |= {metrics_file.name, invalid_file.name}
        key = evaluation_key(cand, questions, params)
        record = _cached(metrics_file, invalid_file, key)
        if record is None:
            answers = answer_questions(
                questions,
                params.vlm.family,
                cand,
                engine=cfg.engine,
                batch_size=cfg.batch_size,
                workers=cfg.workers,
                gpus_per_worker=cfg.gpus_per_worker,
                trust_remote_code=params.vlm.trust_remote_code,
                max_new_tokens=cfg.max_new_tokens,
                torch_threads=params.vlm.torch_threads,
            )
            metrics, invalid = score(questions, answers, params.vlm.family, constant)
            record = {"candidate": cand.name, "kind": cand.kind, "evaluation_key": key, **metrics}
            # Invalid answers first: a file on disk with its key means both are complete.
            write_text_atomic(invalid_file, "".join(json.dumps(r) + "\n" for r in invalid))
            write_json_atomic(metrics_file, record)
            evaluated.append(cand.name)
        else:
            reused.append(cand.name)
        metrics = {k: v for k, v in record.items() if k not in ("candidate", "kind", "evaluation_key")}
        rows.append(summary_row(cand.name, cand.kind, metrics, cfg.headpose_sets))
    for folder in (metrics_dir, invalid_dir):
        for stale in folder.glob("*"):
            if stale.name not in keep:
                stale.unlink()
    chance = chance_scores(train_rows, scored_sets(params, heldout, parquet_root))
    write_json_atomic(table_path, {"candidates": rows, "chance": chance})
    return {"rows": rows, "chance": chance, "questions": questions.num_rows, "evaluated": evaluated, "reused": reused}
