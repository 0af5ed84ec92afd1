"""Benchmark: ingestion through Ray Data vs a plain single-process loop, same work, one run.

Both paths run the very same per-item function (decode → validate → crop → resize → JPEG
encode); the only difference is who schedules it. Measured in one run, because absolute times
drift on these machines: the ratio is the figure to compare. Ray start-up (``ray.init`` plus
starting one worker per CPU) is reported apart.

    .venv/bin/python bench/ingest.py                  # 300W-LP (2,000 samples) and COCO
    .venv/bin/python bench/ingest.py --datasets coco --coco-images 400
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.ingest import ingest  # noqa: E402


def _cached(name: str, key: str, write) -> Path:
    """A synthetic dataset cached under data/bench/<name>_<key> (written once)."""
    root = ROOT / "data" / "bench" / f"{name}_{key}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        write(root)
        (root / ".complete").write_text("")
        print(f"wrote synthetic {name} in {time.perf_counter() - t0:.1f} s -> {root}")
    return root


def _raw(name: str, args: argparse.Namespace, seed: int) -> Path:
    if name == "300w_lp":
        from pipeline.datasets.w300lp import write_synthetic

        per = -(-args.samples // 8)
        return _cached(name, f"{per}x8_seed{seed}", lambda r: write_synthetic(r, n_per_subset=per, seed=seed))
    if name == "coco":
        from pipeline.datasets.coco import write_synthetic

        n = args.coco_images
        return _cached(
            name, f"{n}_seed{seed}", lambda r: write_synthetic(r, n_train_images=n, n_val_images=n // 4, seed=seed)
        )
    raise SystemExit(f"unknown dataset {name}")


def warm_up_ray(raws: dict[str, Path], params, settings: dict, tmp: Path) -> float:
    """Start one Ray worker per CPU, then run one small Ray Data job per dataset; returns seconds.

    The first job in a session starts Ray Data's internal actors and imports its modules in
    the workers: start-up, not throughput, so the timed runs come after this.
    """
    import ray

    t0 = time.perf_counter()

    @ray.remote(num_cpus=1)
    def _warm() -> int:
        import pipeline.ingest  # noqa: F401

        return os.getpid()

    ray.get([_warm.remote() for _ in range(int(ray.cluster_resources().get("CPU", 1)))])
    for n, raw in raws.items():
        ingest(
            n,
            raw,
            tmp / f"{n}-small",
            seed=params.seed,
            crop_margin=params.ingest.dataset(n).crop_margin,
            settings=settings,
            engine="ray",
            limit=16,
        )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="300w_lp,coco")
    ap.add_argument("--samples", type=int, default=2000, help="300W-LP samples")
    ap.add_argument("--coco-images", type=int, default=320, help="COCO train images (val: a quarter)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path (best kept)")
    args = ap.parse_args()

    params = load_params(ROOT / "params.yaml")
    settings = params.ingest.model_dump(exclude={"datasets"})
    names = args.datasets.split(",")
    raws = {n: _raw(n, args, params.seed) for n in names}

    import ray

    from pipeline.raycluster import ray_session

    reports = []
    with tempfile.TemporaryDirectory() as tmp:

        def run(name: str, engine: str) -> tuple[float, int]:
            best, kept = float("inf"), 0
            margin = params.ingest.dataset(name).crop_margin
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                s = ingest(
                    name,
                    raws[name],
                    Path(tmp) / f"{name}-{engine}",
                    seed=params.seed,
                    crop_margin=margin,
                    settings=settings,
                    engine=engine,
                )
                best, kept = min(best, time.perf_counter() - t0), s.kept
            return best, kept

        plain = {n: run(n, "local") for n in names}
        with ray_session(settings.get("num_cpus")) as startup:
            warm = warm_up_ray(raws, params, settings, Path(tmp))
            cpus = ray.cluster_resources().get("CPU", 0)
            orchestrated = {n: run(n, "ray") for n in names}

    for n in names:
        (tp, kept), (tr, _) = plain[n], orchestrated[n]
        unit = "samples" if n == "300w_lp" else "person crops"
        rep = {
            "dataset": n,
            "records": kept,
            "unit": unit,
            "cpus": os.cpu_count(),
            "ray_cpus": cpus,
            "plain_loop_per_s": round(kept / tp, 1),
            "ray_data_per_s": round(kept / tr, 1),
            "ratio_ray_over_plain": round(tp / tr, 2),
            "ray_startup_s": round(startup + warm, 2),
        }
        reports.append(rep)
        print(f"{n}: {kept} {unit}")
        print(f"  plain loop : {rep['plain_loop_per_s']:8.1f} /s  ({tp:.1f} s)")
        print(f"  Ray Data   : {rep['ray_data_per_s']:8.1f} /s  ({tr:.1f} s, Ray on {cpus:g} CPUs)")
        print(f"  ratio      : {rep['ratio_ray_over_plain']:.2f}x  (target >= 1.6x on 2 cores; the limit is 2x)")
    print(f"Ray start-up, not in the ratios: {startup:.1f} s init + {warm:.1f} s worker warm-up")
    print(json.dumps(reports))


if __name__ == "__main__":
    main()
