"""Training run names change with the pipeline's source: a finished run is never "resumed"
by changed code (a run of the same name resumes from its last checkpoint)."""

from __future__ import annotations

from pipeline.train import run_names


def test_run_name_follows_parts_and_source(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(run_names, "PACKAGE", tmp_path)
    run_names.source_digest.cache_clear()
    first = run_names.run_name("pretrain_base", {"steps": 10}, "data-md5")
    assert run_names.run_name("pretrain_base", {"steps": 10}, "data-md5") == first
    assert run_names.run_name("pretrain_base", {"steps": 11}, "data-md5") != first
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    run_names.source_digest.cache_clear()
    changed = run_names.run_name("pretrain_base", {"steps": 10}, "data-md5")
    assert changed != first and changed.startswith("pretrain_base-")
    run_names.source_digest.cache_clear()


def test_the_real_source_digest_covers_the_training_code():
    run_names.source_digest.cache_clear()
    files = {p.relative_to(run_names.PACKAGE).as_posix() for p in run_names.PACKAGE.rglob("*.py")}
    assert {"vlm/examples.py", "train/ray_deepspeed.py", "baselines/augment.py"} <= files
    assert len(run_names.source_digest()) == 64
