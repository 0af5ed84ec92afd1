"""The end-of-run summary: per-stage start, wall time and memory, and the run's wall time."""

from __future__ import annotations

import json

from pipeline import layout
from pipeline.summary import run_summary_text


def test_summary_shows_overlapping_stages_and_the_run_wall_time(tmp_path):
    stages = [
        {
            "stage": "synth@coco",
            "seconds": 10.0,
            "peak_rss_bytes": 2**20,
            "skipped": False,
            "started": 100.0,
            "ended": 110.0,
        },
        {
            "stage": "baseline",
            "seconds": 30.0,
            "peak_rss_bytes": 5 * 2**20,
            "skipped": False,
            "started": 100.5,
            "ended": 130.5,
        },
        {
            "stage": "ingest@coco",
            "seconds": 5.0,
            "peak_rss_bytes": 2**20,
            "skipped": True,
            "started": 110.0,
            "ended": 115.0,
        },
    ]
    path = tmp_path / layout.run_summary()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"flow_run_id": "abc", "stages": stages}))
    text = run_summary_text(tmp_path)
    lines = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.strip()}
    assert lines["baseline"][1:3] == ["0.5", "30.0"]
    assert lines["ingest@coco"][1] == "10.0" and "skipped" in " ".join(lines["ingest@coco"])
    assert lines["sum"][1] == "45.0"  # the stages' own times added up...
    assert lines["wall"][1] == "30.5"  # ...against the run's: they overlapped


def test_summary_of_an_older_run_without_start_times(tmp_path):
    path = tmp_path / layout.run_summary()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"stages": [{"stage": "report", "seconds": 2.0, "peak_rss_bytes": 2**20}]}))
    text = run_summary_text(tmp_path)
    assert "report" in text and not any(ln.startswith("wall") for ln in text.splitlines())
