"""Benchmark: ingestion (images/s) and training (samples/s) at 1 and 2 Ray workers, and 1 vs 2 nodes.

Settings, measured one after the other in one run; every figure is printed as a ratio to the
1-worker figure of the same run (absolute times drift on these shared machines):

* ``local-1`` / ``local-2``: a local Ray (what a stage starts without ``RAY_ADDRESS``) with 1 or 2
  CPUs for ingestion, 1 or 2 training workers of 1 CPU each.
* ``1node-2`` / ``2nodes-2`` (``--nodes``, on by default): the cluster of
  ``scripts/ray_cluster.sh`` (:mod:`pipeline.raynodes`) as one node of 2 CPUs or two nodes of
  1 CPU, joined through ``RAY_ADDRESS``; 2 ingestion workers, 2 training workers. The pair
  isolates what a second node costs (inter-node object transfer, a second raylet) at equal CPUs.

Each setting runs in a fresh driver process: a process joins one Ray cluster (Ray caches the
authentication mode and token per process). Ingestion is the 300W-LP path of ``bench/ingest.py``
(same cached synthetic data, same warm-up), training the toy MLP of ``bench/train.py`` (same
workload; ``--batch`` per worker, so 2 workers train on twice the samples per step: weak
scaling, where 2.0× is the ceiling on 2 cores). Throughput is steady state; Ray and Ray Train
start-up are reported apart. The machine's load average is printed with each setting.

    .venv/bin/python bench/scale.py                  # 1,000 samples, 100 steps, with nodes
    .venv/bin/python bench/scale.py --no-nodes --samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    # name: (label, workers, nodes or None for a local Ray, CPUs per node)
    "local-1": ("local Ray, 1 worker", 1, None, 1),
    "local-2": ("local Ray, 2 workers", 2, None, 2),
    "1node-2": ("cluster: 1 node x 2 CPUs", 2, 1, 2),
    "2nodes-2": ("cluster: 2 nodes x 1 CPU", 2, 2, 1),
}


# ---------------------------------------------------------------- one setting (child process)
def measure(setting: str, args: argparse.Namespace) -> dict:
    """Ingest then train in ``setting``; Ray is local unless ``RAY_ADDRESS`` names the cluster."""
    import ray

    from bench.ingest import _raw, warm_up_ray
    from bench.train import toy_workload
    from pipeline.config import load_params
    from pipeline.ingest import ingest
    from pipeline.raycluster import ray_session
    from pipeline.train import train

    _, workers, nodes, _ = SETTINGS[setting]
    params = load_params(ROOT / "params.yaml")
    settings = params.ingest.model_dump(exclude={"datasets"})
    raw = _raw("300w_lp", args, params.seed)
    out: dict = {"setting": setting, "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        # Ingestion: Ray Data spreads its tasks over the CPUs Ray has (1 or 2 here).
        with ray_session(workers) as startup:
            out["ray_cpus"] = ray.cluster_resources().get("CPU", 0)
            out["ray_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
            warm = warm_up_ray({"300w_lp": raw}, params, settings, Path(tmp))
            t0 = time.perf_counter()
            s = ingest(
                "300w_lp",
                raw,
                Path(tmp) / "ingest",
                seed=params.seed,
                crop_margin=params.ingest.dataset("300w_lp").crop_margin,
                settings=settings,
                engine="ray",
            )
            seconds = time.perf_counter() - t0
        out["ingest"] = {"kept": s.kept, "seconds": seconds, "per_s": s.kept / seconds, "startup_s": startup + warm}

        # Training: a local Ray needs one CPU beyond the workers' (the loop leaves one to Ray
        # Data, which here only hands over in-memory rows); a cluster is taken as it is.
        task, table, cfg = toy_workload(args, num_workers=workers)
        with ray_session(None if nodes else workers + 1):
            r = train(task, table, cfg, Path(tmp) / "train", run_name=f"scale-{setting}")
        out["train"] = {
            "samples_per_s": r.samples_per_s,
            "step_ms": 1000 * cfg.global_batch_size / r.samples_per_s,
            "global_batch": cfg.global_batch_size,
            "startup_s": r.startup_seconds,
            "torch_threads": r.metrics.get("torch_threads"),
        }
    out["load_after"] = os.getloadavg()[0]
    return out


# ---------------------------------------------------------------- the run (parent process)
def _child(setting: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", setting]
    cmd += ["--samples", str(args.samples), "--steps", str(args.steps), "--batch", str(args.batch)]
    cmd += ["--dim", str(args.dim), "--hidden", str(args.hidden), "--depth", str(args.depth), "--rows", str(args.rows)]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{setting} failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _report(results: list[dict]) -> None:
    base = results[0]
    ing0, tr0 = base["ingest"]["per_s"], base["train"]["samples_per_s"]
    print(f"{'setting':28} {'ingest img/s':>12} {'ratio':>6} {'train samples/s':>16} {'ratio':>6}  load (1-min avg)")
    for r in results:
        label = SETTINGS[r["setting"]][0]
        i, t = r["ingest"]["per_s"], r["train"]["samples_per_s"]
        print(
            f"{label:28} {i:12.1f} {i / ing0:5.2f}x {t:16.1f} {t / tr0:5.2f}x  "
            f"{r['load_before']:.1f} -> {r['load_after']:.1f}"
        )
    print(
        "start-up, not in the figures (s): "
        + "; ".join(
            f"{r['setting']}: Ray + warm-up {r['ingest']['startup_s']:.1f}, train() to first step {r['train']['startup_s']:.1f}"
            for r in results
        )
    )
    steps = [f"{r['setting']} {r['train']['step_ms']:.1f} ms (batch {r['train']['global_batch']})" for r in results]
    print("per training step: " + ", ".join(steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000, help="300W-LP samples to ingest")
    ap.add_argument("--coco-images", type=int, default=0, help=argparse.SUPPRESS)  # bench.ingest._raw reads it
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="micro-batch per worker")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--no-nodes", action="store_true", help="skip the 1-vs-2-node cluster settings")
    ap.add_argument("--child", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return

    from pipeline.raynodes import running_cluster

    # Ray workers at niceness 0, as bench/train.py's, so they compete with other jobs on
    # equal terms (the raylet, local or `ray start`ed, reads it from its environment).
    # (running_cluster's `ray start`s inherit this process's environment.)
    os.environ.update(RAY_worker_niceness="0", RAY_USAGE_STATS_ENABLED="0")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; {args.samples} samples; {args.steps} steps")
    results = []
    for setting, (label, _, nodes, cpus) in SETTINGS.items():
        if nodes is None:
            results.append(_child(setting, args, env))
        elif not args.no_nodes:
            with tempfile.TemporaryDirectory(prefix="hpe-ray-") as state:
                with running_cluster(state, nodes=nodes, num_cpus=cpus) as cluster:
                    results.append(_child(setting, args, {**env, **cluster.driver_env()}))
        print(f"  {label}: done", file=sys.stderr)
    _report(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
