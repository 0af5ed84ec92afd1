"""Prefect flow ``hpe``: every pipeline stage as a task, run as the DAG ``dvc.yaml`` declares.

Each task runs ``dvc repro --single-item <stage>`` so that a Prefect run and a plain
``dvc repro`` share one cache and one ``dvc.lock`` (unchanged stages are skipped by DVC);
with ``orchestration.use_dvc: false`` the task calls the stage function directly instead.
A task waits for the stages its inputs come from (DVC's own graph of ``dvc.yaml``), so
independent branches (the baseline, the VLM, VLPose; the synths, ingests, adapters, merges)
overlap, up to ``orchestration.parallel_stages`` at once. DVC holds its repository lock only
around a stage's bookkeeping, not while the command runs, and each task waits for that lock
(``--wait-for-lock``), so concurrent ``dvc repro`` of independent stages is safe.
No stage logic lives here: the work is in :mod:`pipeline.stages`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, as_completed

from flows.schedule import longest_path_first, stage_seconds
from pipeline import layout, stage_runners
from pipeline.atomic import write_json_atomic
from pipeline.config import Params, load_params
from pipeline.datasets import DATASETS
from pipeline.monitor import measure
from pipeline.stage_runners import POSE_TRAIN_STAGES
from pipeline.tracking import FLOW_RUN_ENV, SQLITE_PREFIX, absolute_tracking_uri

HPE_RAY_STATE_ENV = "HPE_SHARED_RAY_STATE"  # the shared Ray's state folder (recorded in the run summary)


def stage_names(params: Params) -> list[str]:
    """The DVC stage names of the DAG in topological order (matches ``dvc.yaml``'s foreach)."""
    synth = [f"synth@{name}" for name, cfg in params.synthetic.model_dump(by_alias=True).items() if cfg is not None]
    ingest = [f"ingest@{name}" for name in params.ingest.datasets]
    gt = [f"ground_truth@{name}" for name in params.ingest.datasets if DATASETS[name].kind == "keypoints"]
    vlm = ["pretrain_base", *(f"train_lora@{name}" for name in params.lora.adapters)]
    merged = [f"merge@{method}" for method in params.merge.methods]
    evaluate = ["evaluate", *(["register"] if params.registry.enabled else [])]
    pose = [*POSE_TRAIN_STAGES, "pose_evaluate", *(["pose_register"] if params.pose.registry.enabled else [])]
    return synth + ingest + gt + ["baseline"] + vlm + merged + evaluate + pose + ["report"]


def stage_graph(workdir: Path, names: list[str]) -> dict[str, list[str]]:
    """Each stage's upstream stages among ``names`` (those whose outputs it reads, directly or
    through stages left out of ``names``), from DVC's graph of ``workdir/dvc.yaml``.

    Without a ``dvc.yaml`` each stage waits for the one before it (``names`` is topological).
    """
    if not (workdir / "dvc.yaml").exists():
        return {n: names[:i][-1:] for i, n in enumerate(names)}
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        # Edges run from a stage to the stages it depends on; `name` is the stage's name in
        # dvc.yaml (`addressing` would be relative to the current directory).
        graph = repo.index.graph
        upstream = {s.name: {d.name for d in nx.descendants(graph, s)} for s in graph.nodes}
    missing = [n for n in names if n not in upstream]
    if missing:
        raise ValueError(f"stages {missing} are not in {workdir / 'dvc.yaml'}")
    return {n: [u for u in names if u in upstream[n]] for n in names}


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def _run_dvc(stage: str, workdir: Path, env: dict[str, str]) -> dict:
    logger = get_run_logger()
    cmd = [str(Path(sys.executable).with_name("dvc")), "--wait-for-lock", "repro", "--single-item", stage]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with measure(proc.pid) as usage:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.rstrip())
            logger.info(line.rstrip())
        proc.wait()
    if proc.returncode != 0:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"`dvc repro --single-item {stage}` failed (exit {proc.returncode}):\n{tail}")
    skipped = any("didn't change, skipping" in ln for ln in lines)
    return {"seconds": usage.seconds, "peak_rss_bytes": usage.peak_rss_bytes, "skipped": skipped}


def _run_direct(stage: str, params: Params, workdir: Path) -> dict:
    cwd = Path.cwd()
    os.chdir(workdir)  # the runners resolve pipeline.layout's relative paths, as dvc.yaml's commands do
    try:
        with measure() as usage:
            stage_runners.run_stage(stage, params)
    finally:
        os.chdir(cwd)
    return {"seconds": usage.seconds, "peak_rss_bytes": usage.peak_rss_bytes, "skipped": False}


@contextmanager
def shared_ray(params: Params, workdir: Path) -> Iterator[dict[str, str]]:
    """One Ray head for the whole run, unless one is named already (``RAY_ADDRESS``) or params
    turn it off; yields the environment a stage needs to join it (empty: each stage starts its own)."""
    if not params.orchestration.shared_ray or os.environ.get("RAY_ADDRESS"):
        yield {}
        return
    from pipeline.raynodes import running_cluster

    # One CPU more per parallel stage: a training worker holds its CPU for the whole stage, and
    # two trainings side by side would leave the Ray Data tasks that feed them none.
    slots = params.orchestration.stage_slots()
    cpus = params.orchestration.ray_num_cpus or (os.cpu_count() or 1) + (slots if slots > 1 else 0)
    # A private folder with a short path (mode 700, removed after): Ray's Unix socket paths
    # must fit in 107 bytes, which a project folder deep in a file system often does not.
    state = Path(tempfile.mkdtemp(prefix="hpe-ray-"))
    try:
        with running_cluster(state, nodes=1, num_cpus=cpus) as cluster:
            get_run_logger().info(f"shared Ray for this run at {cluster.address} ({cpus} CPUs, state {state})")
            yield {**cluster.driver_env(), HPE_RAY_STATE_ENV: str(state)}
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@task(name="stage", task_run_name="{stage}", retries=0)
def run_stage(stage: str, params_path: str, workdir: str, ray_env: dict[str, str] | None = None) -> dict:
    """Run one DAG stage (through DVC, or directly) and return its wall time and peak memory.

    ``ray_env`` (from :func:`shared_ray`) makes the stage join the run's Ray instead of starting its own.
    """
    started = time.time()
    out = _run_stage(stage, params_path, workdir, ray_env)
    return {**out, "started": started, "ended": time.time()}


def _run_stage(stage: str, params_path: str, workdir: str, ray_env: dict[str, str] | None) -> dict:
    params = load_params(Path(workdir) / params_path)
    wd = Path(workdir).resolve()
    ray_env = ray_env or {}
    if params.orchestration.use_dvc:
        env = {**os.environ, **ray_env}
        env[FLOW_RUN_ENV] = _flow_run_id()
        env["HPE_DVC_STAGE"] = stage
        # The stage commands call `hpe`, which lives beside this interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        out = _run_dvc(stage, wd, env)
    else:
        os.environ[FLOW_RUN_ENV] = _flow_run_id()
        with _environ(ray_env):
            out = _run_direct(stage, params, wd)
    return {"stage": stage, **out}


def ingest_markdown(workdir: Path, params: Params) -> str:
    """Markdown table of the ingest counts and the top quarantine reasons per dataset."""
    lines = [
        "# Ingested datasets",
        "",
        "| dataset | in | kept | filtered | quarantined | bad % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    reasons = []
    for name in params.ingest.datasets:
        path = workdir / layout.ingest_metrics(name)
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        lines.append(
            f"| {name} | {m['counts_in']} | {m['kept']} | {m['filtered']} | {m['quarantined']} | "
            f"{100 * m['bad_fraction']:.2f} |"
        )
        for reason, n in list(m["quarantine_reasons"].items())[:5]:
            reasons.append(f"| {name} | {n} | {reason} |")
    lines += ["", "## Quarantine (top reasons)", ""]
    lines += ["| dataset | records | reason |", "|---|---:|---|", *reasons] if reasons else ["Nothing quarantined."]
    lines += ["", f"Quarantined records: `{layout.PARQUET}/<dataset>/quarantine.parquet`."]
    return "\n".join(lines)


def _result_artifacts(workdir: Path, params: Params) -> None:
    """Table artifacts of the results, built by the report's own code (same rows as reports/report.md)."""
    from pipeline.report import candidate_records, collect, keypoint_records

    if not (workdir / layout.evaluation_table()).exists():
        return  # a run restricted to stages before `evaluate`
    inputs = collect(workdir, params.evaluate.headpose_sets)
    create_table_artifact(
        key="candidates",
        table=candidate_records(inputs),
        description="Every candidate and the baseline on the head-pose test sets and on grounding; published rows marked",
    )
    if inputs.keypoints:
        create_table_artifact(
            key="keypoints",
            table=keypoint_records(inputs.keypoints),
            description="COCO keypoint AP/AP50/AP75/AR (%) per pose model and domain",
        )


def _create_tracking_store(params: Params, wd: Path) -> None:
    """Create (and migrate) a local SQLite MLflow store before stages run side by side: two
    stages that both find no ``mlflow.db`` would run MLflow's schema migration at once
    (``table _alembic_tmp_metrics already exists``)."""
    uri = params.tracking.resolved_uri()
    if not params.tracking.enabled or not uri.startswith(SQLITE_PREFIX):
        return
    from mlflow.tracking import MlflowClient

    MlflowClient(absolute_tracking_uri(uri, wd)).search_experiments(max_results=1)


def _run_dag(
    names: list[str], upstream: dict[str, list[str]], params: Params, params_path: str, wd: Path, ray_env: dict
) -> list[dict]:
    """Run every stage once its upstream stages are done, up to ``stage_slots()`` at a time,
    a free slot going to the ready stage with the longest path to the end
    (:mod:`flows.schedule`); results in ``names``' order.

    A stage is submitted only when it can start, so the Prefect UI shows it Pending until
    then (not Running while it waits), with ``wait_for`` edges to its upstream tasks. A failed
    stage stops its downstream stages (never submitted); independent branches run to their
    end, then the first failure in DAG order is raised.
    """
    slots = params.orchestration.stage_slots()
    if slots == 1:  # one after another in the flow's own thread (direct mode's stages need it)
        return [run_stage(name, params_path, str(wd), ray_env) for name in names]
    futures: dict[str, PrefectFuture] = {}
    running: dict[str, PrefectFuture] = {}
    blocked: set[str] = set()  # failed, or downstream of a failure
    waiting = longest_path_first(names, upstream, stage_seconds(wd))  # free slots go to long chains first
    while waiting or running:
        for name in list(waiting):
            if len(running) >= slots:
                break
            if any(u in blocked for u in upstream[name]):
                waiting.remove(name)
                blocked.add(name)
            elif all(u in futures and u not in running for u in upstream[name]):
                waiting.remove(name)
                deps = [futures[u] for u in upstream[name]]
                futures[name] = running[name] = run_stage.submit(name, params_path, str(wd), ray_env, wait_for=deps)
        if not running:
            break
        done = next(as_completed(list(running.values())))
        name = next(n for n, f in running.items() if f is done)
        del running[name]
        done.wait()  # as_completed can yield before the future holds its final state
        if not done.state.is_completed():
            blocked.add(name)
    failed = [n for n in names if n in blocked and n in futures]
    if failed:
        futures[failed[0]].result()  # raises the stage's own error
        raise RuntimeError(f"stage {failed[0]} ended {futures[failed[0]].state.name}")
    return [futures[name].result() for name in names]


@flow(name="hpe", log_prints=True)
def hpe(
    params_path: str = "params.yaml", workdir: str = ".", stages: list[str] | None = None, wait_for_lock_s: float = 0.0
) -> list[dict]:
    """The whole pipeline. ``stages`` restricts the run to some stage names (DAG order kept).

    One run at a time per project (:mod:`pipeline.runlock`): while another run holds the
    project's run lock this one fails at once naming it, or waits up to ``wait_for_lock_s``.
    """
    from pipeline.runlock import run_lock

    wd = Path(workdir).resolve()
    params = load_params(wd / params_path)
    names = stage_names(params)
    if stages:
        unknown = sorted(set(stages) - set(names))
        if unknown:
            raise ValueError(f"unknown stages {unknown}; valid: {names}")
        names = [n for n in names if n in stages]
    # DVC's lock covers one stage command, not a run: overlapping runs would interleave stages.
    log = get_run_logger()
    with run_lock(wd, wait_s=wait_for_lock_s, flow_run_id=_flow_run_id(), log=log.info) as lock:
        if lock.waited_s > 1:
            log.info(f"got the run lock after {lock.waited_s:.0f} s")
        _create_tracking_store(params, wd)
        with shared_ray(params, wd) as ray_env:
            results = _run_dag(names, stage_graph(wd, names), params, params_path, wd, ray_env)
        t0 = min((r["started"] for r in results), default=0.0)
        shared = {"address": ray_env["RAY_ADDRESS"], "state_dir": ray_env[HPE_RAY_STATE_ENV]} if ray_env else None

        create_markdown_artifact(
            key="ingest-summary",
            markdown=ingest_markdown(wd, params),
            description="Dataset counts and quarantine summary",
        )
        create_table_artifact(
            key="stage-timings",
            table=[
                {
                    "stage": r["stage"],
                    "started_s": round(r["started"] - t0, 1),  # after the first stage began: the run's timeline
                    "seconds": round(r["seconds"], 2),
                    "peak_rss_mb": round(r["peak_rss_bytes"] / 2**20),
                    "skipped": r["skipped"],
                }
                for r in results
            ],
            description="Wall time and peak memory per stage",
        )
        _result_artifacts(wd, params)
        report = wd / layout.report_md()
        if report.exists():
            create_markdown_artifact(key="report", markdown=report.read_text(), description="Results report")
        write_json_atomic(
            wd / layout.run_summary(),
            {
                "flow_run_id": _flow_run_id(),
                "stages": results,
                "lock_wait_s": round(lock.waited_s, 2),
                "shared_ray": shared,
            },
        )
    return results
