"""The end-of-run summary the README's first command prints: per-stage time, memory, where to look."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import layout


def run_summary_text(workdir: str | Path = ".") -> str:
    """Human-readable summary of the last flow run (``reports/pipeline_run.json``)."""
    wd = Path(workdir)
    path = wd / layout.run_summary()
    if not path.exists():
        return f"no run summary at {path}: run the flow first (make demo)"
    run = json.loads(path.read_text())
    rows = run["stages"]
    width = max([len(r["stage"]) for r in rows] + [5])
    t0 = min((r["started"] for r in rows if "started" in r), default=None)
    out = [f"{'stage':<{width}}  {'start s':>8}  {'wall s':>8}  {'peak MB':>8}  note"]
    for r in rows:
        note = "unchanged, skipped by DVC" if r.get("skipped") else ""
        start = f"{r['started'] - t0:8.1f}" if t0 is not None and "started" in r else f"{'':8}"
        out.append(f"{r['stage']:<{width}}  {start}  {r['seconds']:8.1f}  {r['peak_rss_bytes'] / 2**20:8.0f}  {note}")
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_bytes"] for r in rows), default=0)
    out.append(f"{'sum':<{width}}  {'':8}  {total:8.1f}  {peak / 2**20:8.0f}  (peak = largest stage, process tree)")
    if t0 is not None:
        # Stages overlap where the DAG allows, so the run's wall time is less than the sum.
        wall = max(r["ended"] for r in rows if "ended" in r) - t0
        out.append(f"{'wall':<{width}}  {'':8}  {wall:8.1f}  {'':8}  first stage start to last stage end")
    api = os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    out += [
        "",
        "Where to look next:",
        f"  Prefect UI      {api.removesuffix('/api')}   (flow run {run.get('flow_run_id', '?')})",
        "  MLflow UI       .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000",
        f"  Parquet         {layout.PARQUET}/<dataset>/<split>/part-*.parquet  (quarantine.parquet beside)",
        f"  Report          {layout.report_md()}   (figures beside; the Prefect artifact `report`)",
        f"  Ingest metrics  {layout.METRICS}/ingest/<dataset>.json   (dvc metrics show)",
        f"  Run summary     {layout.run_summary()}",
        "  Stop services   make stop",
    ]
    return "\n".join(out)
