"""Benchmark: the orchestrated training loop (Ray Train + DeepSpeed) vs a plain PyTorch loop.

Same model (the toy MLP, widened so that a step costs tens of ms), same rows, same batches
(the loop's own sampler and collate), same AdamW + warm-up/cosine schedule + clipping, same
number of steps and threads, measured in one run because absolute times drift on these
machines: the ratio is the figure to compare (target: orchestrated ≥ 0.85× plain).

Per-step throughput counts the steady state only — from the end of the first step to the end
of the last, timed inside the worker for (b) — so Ray and DeepSpeed start-up, reported apart
as time-to-first-step, does not dilute it. The orchestrated figure includes what the loop
does every step and the plain one does not: MLflow logging on rank 0 (buffered), DeepSpeed's
engine bookkeeping and gradient all-reduce hooks.

Ray starts its worker processes at niceness 15 (Ray's ``worker_niceness``): on a machine other
jobs share, a Ray worker then gets less CPU than the plain loop at niceness 0, whatever the
loop does. The benchmark starts its local Ray with ``RAY_worker_niceness=0`` so that both
loops compete on equal terms; ``--ray-default-niceness`` measures Ray's default instead
(on an otherwise idle machine the two agree).

    .venv/bin/python bench/train.py                       # 1 worker, ZeRO-0, 200 steps, 3 rounds
    .venv/bin/python bench/train.py --steps 400 --hidden 2048 --no-tracking
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from pipeline.train import TrainConfig, train  # noqa: E402
from pipeline.train.ray_deepspeed import StepSampler, lr_factor, param_groups, sort_keys, step_seed  # noqa: E402
from pipeline.train.toy import ToyRegression, make_toy_table  # noqa: E402


def plain_loop(task: ToyRegression, table, cfg: TrainConfig) -> dict:
    """The same training as the orchestrated loop's, in one process, no Ray, no DeepSpeed."""
    table = table.sort_by([(k, "ascending") for k in sort_keys(task, table.schema)]).combine_chunks()
    sampler = StepSampler(
        table.num_rows, seed=cfg.seed, micro_batch_size=cfg.micro_batch_size, grad_accum=cfg.grad_accum, world_size=1
    )
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    t_steady = None
    loss_value = float("nan")
    for step in range(cfg.steps):
        torch.manual_seed(step_seed(cfg.seed, step, 0))
        for micro in range(cfg.grad_accum):
            batch = task.collate(table.take(sampler.indices(step, micro, 0)).to_pylist())
            loss = task.loss(model, batch)
            (loss / cfg.grad_accum).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        if t_steady is None:
            t_steady = time.perf_counter()
    elapsed = time.perf_counter() - t_steady
    return {
        "samples_per_s": (cfg.steps - 1) * cfg.global_batch_size / elapsed,
        "step_ms": 1000 * elapsed / (cfg.steps - 1),
        "final_loss": loss_value,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def toy_workload(args: argparse.Namespace, num_workers: int = 1) -> tuple[ToyRegression, pa.Table, TrainConfig]:
    """The benchmark's task, rows and config from ``--dim/--hidden/--depth/--rows/--steps/--batch``.

    ``batch`` is per worker: ``num_workers`` workers train on ``num_workers × batch`` samples a step.
    """
    task = ToyRegression(dim=args.dim, hidden=args.hidden, depth=args.depth)
    table = make_toy_table(args.rows, dim=args.dim)
    cfg = TrainConfig(
        steps=args.steps,
        micro_batch_size=args.batch,
        lr=1e-3,
        warmup_steps=min(10, args.steps),
        zero_stage=0,
        num_workers=num_workers,
        cpus_per_worker=1,
        checkpoint_every=args.steps,
        log_every=50,
    )
    return task, table, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="micro-batch size")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3, help="(a)/(b) alternations; medians are compared")
    ap.add_argument("--no-tracking", action="store_true", help="run (b) without MLflow logging")
    ap.add_argument("--ray-default-niceness", action="store_true", help="keep Ray's workers at niceness 15")
    args = ap.parse_args()

    task, table, cfg = toy_workload(args)
    n_params = sum(p.numel() for p in task.build_model().parameters())
    print(
        f"model: {n_params / 1e6:.2f} M parameters; batch {args.batch}; {args.steps} steps; 1 thread each; "
        f"{args.rounds} rounds"
    )

    def run_plain() -> dict:
        # The thread count Ray gives a 1-CPU worker (OMP_NUM_THREADS=1).
        threads = torch.get_num_threads()
        torch.set_num_threads(int(cfg.cpus_per_worker))
        try:
            out = plain_loop(task, table, cfg)
        finally:
            torch.set_num_threads(threads)
        print(f"  (a) plain PyTorch      : {out['samples_per_s']:8.1f} samples/s  ({out['step_ms']:.1f} ms/step)")
        return out

    def run_orchestrated(name: str, tmp: Path):
        tracking = None if args.no_tracking else {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench"}
        result = train(task, table, cfg, tmp / name, run_name=name, tracking=tracking)
        print(
            f"  (b) Ray Train+DeepSpeed: {result.samples_per_s:8.1f} samples/s  "
            f"({1000 * cfg.global_batch_size / result.samples_per_s:.1f} ms/step), "
            f"start-up {result.startup_seconds:.1f} s, torch threads {result.metrics.get('torch_threads')}"
        )
        return result

    # (a) and (b) alternate, (a) first and last, so that the machine's drift (other jobs on
    # 2 shared cores) hits both; the medians are compared.
    from safetensors.torch import load_file

    from pipeline.raycluster import ray_session

    if not args.ray_default_niceness and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_worker_niceness", "0")  # read by the raylet ray_session starts
    print(f"Ray worker niceness: {os.environ.get('RAY_worker_niceness', '15 (Ray default)')}")
    plains, orchestrated = [], []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, ray_session() as ray_init_s:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}")
            plains.append(run_plain())
            orchestrated.append(run_orchestrated(f"bench-{r}", Path(tmp)))
        plains.append(run_plain())
        final = load_file(str(orchestrated[0].model_dir / "model.safetensors"))

    plain_sps = statistics.median(p["samples_per_s"] for p in plains)
    orch_sps = statistics.median(r.samples_per_s for r in orchestrated)
    ratio = orch_sps / plain_sps
    first = orchestrated[0]
    m = first.metrics
    warm = [r.startup_seconds for r in orchestrated[1:]]
    print(
        f"median (a) plain PyTorch      : {plain_sps:8.1f} samples/s ({1000 * cfg.global_batch_size / plain_sps:.1f} ms/step)"
    )
    print(
        f"median (b) Ray Train+DeepSpeed: {orch_sps:8.1f} samples/s ({1000 * cfg.global_batch_size / orch_sps:.1f} ms/step)"
    )
    print(f"ratio (b)/(a): {ratio:.3f}   (target ≥ 0.85)")
    print(
        f"start-up (b), train() call → first step, cold: ray.init {ray_init_s:.1f} s + {first.startup_seconds:.1f} s "
        f"(preflight {m['preflight_s']:.1f} + MLflow run {m['mlflow_s']:.1f} + Ray Train controller/workers/process "
        f"group {m['ray_train_start_s']:.1f} + data {m['data_load_s']:.1f} + DeepSpeed import/initialize "
        f"{m['engine_init_s']:.1f})" + (f"; Ray already up: {statistics.median(warm):.1f} s" if warm else "")
    )
    drift = max(float((final[k] - plains[0]["state"][k]).abs().max()) for k in final)
    print(
        f"same work: final loss {plains[0]['final_loss']:.5f} (a) vs {first.final_loss:.5f} (b); "
        f"max |Δweight| {drift:.2e}"
    )
    print(
        json.dumps(
            {
                "plain_samples_per_s": [p["samples_per_s"] for p in plains],
                "orchestrated_samples_per_s": [r.samples_per_s for r in orchestrated],
                "ratio": ratio,
                "ray_init_s": ray_init_s,
                "startup_s": [r.startup_seconds for r in orchestrated],
                "max_abs_weight_diff": drift,
            }
        )
    )


if __name__ == "__main__":
    main()
