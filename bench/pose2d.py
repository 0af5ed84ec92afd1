"""Benchmark: batch keypoint inference through Ray Data vs a plain loop, same model, one run.

Both paths call the very same predictor (:class:`pipeline.pose2d.predict.KeypointPredictor`:
JPEG decode → resize → ViTPose forward → DARK decoding → image coordinates) on the same
ingested COCO person crops; the only difference is who schedules it. The plain loop is given
every core as torch threads (what a user's own script would do); Ray Data runs one actor per
core, one torch thread each. Each call pays a fixed cost (Ray Data starting its actors, each loading the model): the
*marginal* rate (a big run minus a small one) is the steady-state throughput a large dataset
sees; the end-to-end rate of the big run is printed beside it.

    .venv/bin/python bench/pose2d.py                 # default ViTPose size from params.yaml
    .venv/bin/python bench/pose2d.py --coco-images 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import _cached  # noqa: E402  (one cache of synthetic datasets for every benchmark)
from pipeline.config import load_params  # noqa: E402
from pipeline.ingest import ingest, read_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco-images", type=int, default=240, help="synthetic COCO train images")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ray Data actors")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rows", type=int, default=3000, help="crops per timed run (the ingested ones, tiled)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path (best kept)")
    args = ap.parse_args()

    import pyarrow as pa
    import torch

    from pipeline.datasets.coco import write_synthetic
    from pipeline.pose2d.artifacts import save_vitpose
    from pipeline.pose2d.predict import PREDICT_COLUMNS, predict_records
    from pipeline.pose2d.vitpose import ViTPoseSize, build_vitpose
    from pipeline.raycluster import ray_session

    params = load_params(ROOT / "params.yaml")
    n = args.coco_images
    raw = _cached(
        "coco",
        f"{n}_seed{params.seed}",
        lambda r: write_synthetic(r, n_train_images=n, n_val_images=n // 4, seed=params.seed),
    )
    with tempfile.TemporaryDirectory() as tmp:
        pq = Path(tmp) / "coco"
        ingest(
            "coco",
            raw,
            pq,
            seed=params.seed,
            crop_margin=params.ingest.dataset("coco").crop_margin,
            settings=params.ingest.model_dump(exclude={"datasets"}),
            engine="local",
        )
        table = read_records(pq, "train").select(list(PREDICT_COLUMNS))
        model_dir = save_vitpose(build_vitpose(ViTPoseSize(**params.pose.size), seed=0), Path(tmp) / "vitpose")

        big = pa.concat_tables([table] * -(-args.rows // table.num_rows)).slice(0, args.rows)
        small = big.slice(0, args.batch_size * args.workers * 2)

        def timed(rows: pa.Table, **kw) -> float:
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = predict_records(model_dir, rows, batch_size=args.batch_size, **kw)
                best = min(best, time.perf_counter() - t0)
                assert len(out) == rows.num_rows
            return best

        def rates(**kw) -> tuple[float, float]:
            """(end-to-end img/s on the big table, marginal img/s: the big run minus a small one,
            which cancels the fixed cost of every call: actor start-up and model loading)."""
            t_small, t_big = timed(small, **kw), timed(big, **kw)
            return big.num_rows / t_big, (big.num_rows - small.num_rows) / max(t_big - t_small, 1e-9)

        cores = os.cpu_count() or 1
        plain = rates(engine="local", torch_threads=cores)
        plain_one = rates(engine="local", torch_threads=1)
        torch.set_num_threads(cores)
        # Ray starts workers at niceness 15; on a shared machine they would lose to the loop at 0
        # whatever Ray does (bench/train.py measured it), so both compete on equal terms here.
        if not os.environ.get("RAY_ADDRESS"):
            os.environ.setdefault("RAY_worker_niceness", "0")
        with ray_session() as startup:
            ray_rates = rates(engine="ray", workers=args.workers, torch_threads=1)

    rep = {
        "crops": big.num_rows,
        "model_size": params.pose.size,
        "cpus": cores,
        "plain_loop_per_s": [round(v, 1) for v in plain],
        "plain_loop_one_thread_per_s": [round(v, 1) for v in plain_one],
        "ray_data_per_s": [round(v, 1) for v in ray_rates],
        "ray_workers": args.workers,
        "ratio_ray_over_plain_end_to_end": round(ray_rates[0] / plain[0], 2),
        "ratio_ray_over_plain_marginal": round(ray_rates[1] / plain[1], 2),
        "ratio_ray_over_one_thread_loop_marginal": round(ray_rates[1] / plain_one[1], 2),
        "ray_init_s": round(startup, 2),
    }
    print(f"{big.num_rows} COCO person crops, ViTPose {params.pose.size}; img/s end-to-end | marginal")
    for label, (e2e, marg) in (
        (f"plain loop, {cores} torch threads ", plain),
        ("plain loop, 1 torch thread  ", plain_one),
        (f"Ray Data, {args.workers} actors x 1 thread", ray_rates),
    ):
        print(f"  {label}: {e2e:8.1f} | {marg:8.1f}")
    print(
        f"  ratio Ray Data / plain loop: {rep['ratio_ray_over_plain_end_to_end']:.2f}x end-to-end, "
        f"{rep['ratio_ray_over_plain_marginal']:.2f}x marginal "
        f"({rep['ratio_ray_over_one_thread_loop_marginal']:.2f}x against the one-thread loop)"
    )
    print(f"Ray init, not in the ratios: {startup:.1f} s")
    print(json.dumps(rep))


if __name__ == "__main__":
    main()
