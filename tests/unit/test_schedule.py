"""Longest-path-first stage order: which ready stage a free slot goes to, and the times behind it."""

from __future__ import annotations

import json
from pathlib import Path

from flows.hpe import stage_graph, stage_names
from flows.schedule import REFERENCE_TIMES, longest_path_first, stage_seconds
from pipeline import layout
from pipeline.config import load_params

ROOT = Path(__file__).resolve().parents[2]


def test_the_stage_heading_the_longest_chain_comes_first():
    # a (1 s) -> b (1 s); c (5 s) -> d (1 s); e (3 s) alone. Lengths: a 2, b 1, c 6, d 1, e 3.
    names = ["a", "b", "c", "d", "e"]
    upstream = {"a": [], "b": ["a"], "c": [], "d": ["c"], "e": []}
    order = longest_path_first(names, upstream, {"a": 1, "b": 1, "c": 5, "d": 1, "e": 3})
    assert order == ["c", "e", "a", "b", "d"]  # b and d tie at 1 s: names' order


def test_a_stage_without_a_time_weighs_the_median():
    names = ["a", "b", "c"]
    upstream = {"a": [], "b": [], "c": []}
    # median of the known (1, 9) is 5: c sorts between them
    assert longest_path_first(names, upstream, {"a": 1, "b": 9}) == ["b", "c", "a"]


def test_times_come_from_the_last_run_where_it_ran_the_stage(tmp_path):
    reference = json.loads(REFERENCE_TIMES.read_text())["seconds"]
    assert stage_seconds(tmp_path) == reference  # no run here yet
    summary = tmp_path / layout.run_summary()
    summary.parent.mkdir(parents=True)
    summary.write_text(
        json.dumps(
            {
                "stages": [
                    {"stage": "baseline", "seconds": 12.5, "skipped": False},
                    {"stage": "pretrain_base", "seconds": 0.4, "skipped": True},  # DVC no-op: not its cost
                ]
            }
        )
    )
    seconds = stage_seconds(tmp_path)
    assert seconds["baseline"] == 12.5
    assert seconds["pretrain_base"] == reference["pretrain_base"]
    summary.write_text("{not json")
    assert stage_seconds(tmp_path) == reference


def test_without_any_times_every_stage_weighs_the_same(tmp_path, monkeypatch):
    import flows.schedule as schedule

    monkeypatch.setattr(schedule, "REFERENCE_TIMES", tmp_path / "missing.json")
    assert stage_seconds(tmp_path) == {}
    # b -> c is the longest chain (two stages); a and c tie at one: names' order
    assert longest_path_first(["a", "b", "c"], {"a": [], "b": [], "c": ["b"]}, {}) == ["b", "a", "c"]


def _two_slot_makespan(names, upstream, seconds, order):
    """Wall time of list scheduling on two slots, ready stages taken in ``order``."""
    now, done, running, waiting = 0.0, {}, {}, list(order)
    while waiting or running:
        for name in [n for n in waiting if all(u in done for u in upstream[n])]:
            if len(running) == 2:
                break
            waiting.remove(name)
            running[name] = now + seconds[name]
        name = min(running, key=running.get)
        now = done[name] = running.pop(name)
    return now


def test_reference_times_cover_the_default_dag_and_shorten_its_two_slot_run():
    names = stage_names(load_params(ROOT / "params.yaml"))
    upstream = stage_graph(ROOT, names)
    seconds = json.loads(REFERENCE_TIMES.read_text())["seconds"]
    assert set(names) <= set(seconds)
    in_dag_order = _two_slot_makespan(names, upstream, seconds, names)
    longest_first = _two_slot_makespan(names, upstream, seconds, longest_path_first(names, upstream, seconds))
    bound = max(sum(seconds[n] for n in names) / 2, max(seconds.values()))
    assert longest_first < in_dag_order
    assert longest_first <= bound * 1.01
