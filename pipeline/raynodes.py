"""A multi-node Ray cluster on one machine: a head and worker nodes, each its own ``ray start``.

``scripts/ray_cluster.sh start|stop|status`` is this module's CLI; the multi-node test and
``bench/scale.py`` use :func:`running_cluster`. It rehearses, on one machine, what a real
cluster does: the stages join it through ``RAY_ADDRESS`` (:mod:`pipeline.raycluster`) and Ray
places work on whichever node has the resources.

What Ray 2.60's ``ray start`` does, and why the options below are set as they are:

* ``--node-ip-address 127.0.0.1`` is rewritten to the machine's routable address (Ray's
  ``resolve_ip_for_localhost``), and the GCS, raylet and object-manager gRPC servers listen on
  all interfaces whatever the node address: Ray has no bind-address option. So the cluster is
  protected by **token authentication** instead: every node and every driver runs with
  ``RAY_AUTH_MODE=token`` and our own token file (``RAY_AUTH_TOKEN_PATH``, mode 600). A driver
  that passes an explicit address never turns token mode on by itself, which is why
  :meth:`Cluster.driver_env` exports both variables beside ``RAY_ADDRESS``.
* Everything a node writes lives under its own ``--temp-dir`` inside our state folder, and
  ports are Ray's free choice (``--port 0``) or found free here: no fixed port that another Ray
  instance on the machine may hold (the autoscaler's metrics port is fixed at 44217 unless
  ``AUTOSCALER_METRIC_PORT`` says otherwise).
* ``ray stop`` would stop *every* Ray process on the machine, other people's included. Stopping
  here signals only the processes this module recorded at start (matched by pid and creation
  time, so a recycled pid is never hit) and their descendants, in Ray's own order: raylets,
  then the other daemons and workers, then the GCS.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
# A node's Unix sockets live at <temp-dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store
# (~62 characters below the temp dir); Linux caps a socket path at 107.
SOCKET_SUFFIX_LEN = 62
SOCKET_PATH_MAX = 107
RAY_DAEMONS = {"gcs_server", "raylet"}


class ClusterError(RuntimeError):
    """A node did not start, the state folder is unusable, or a cluster already runs there."""


@dataclass
class Proc:
    """A process we started, identified by pid *and* creation time (pids are recycled)."""

    pid: int
    create_time: float
    name: str

    def process(self) -> psutil.Process | None:
        """The live process, or ``None`` when it is gone, a zombie or another process now."""
        try:
            p = psutil.Process(self.pid)
            if abs(p.create_time() - self.create_time) > 0.01 or p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None


@dataclass
class Node:
    name: str
    temp_dir: str
    head: bool
    procs: list[Proc] = field(default_factory=list)


@dataclass
class Cluster:
    """A running cluster as recorded in ``<state_dir>/cluster.json``."""

    state_dir: str
    address: str
    token_path: str
    num_cpus: int
    nodes: list[Node]
    started_at: float

    def driver_env(self) -> dict[str, str]:
        """What a driver process needs to join: the address and the token."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def exports(self) -> str:
        return "\n".join(f"export {k}={v}" for k, v in self.driver_env().items())

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> Cluster | None:
        try:
            data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        nodes = [Node(**{**n, "procs": [Proc(**p) for p in n["procs"]]}) for n in data.pop("nodes")]
        return cls(**data, nodes=nodes)


# ---------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_executable() -> str:
    # The `ray` of this interpreter's environment: the nodes must run the driver's Ray version.
    exe = Path(sys.executable).parent / "ray"
    return str(exe) if exe.exists() else shutil.which("ray") or "ray"


def _token(state_dir: Path) -> Path:
    """Our own token (not ~/.ray/auth_token, which every local ``ray.init`` shares)."""
    path = state_dir / TOKEN_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _node_env(token: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must start a cluster, not look for one
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        AUTOSCALER_METRIC_PORT=str(_free_port()),
    )
    return env


def _processes_under(temp_dir: str) -> list[Proc]:
    """The daemons a node started: their command lines name its temp dir."""
    marker = temp_dir.rstrip("/") + "/"
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "create_time", "name"]):
        cmd = " ".join(p.info["cmdline"] or [])
        # Ray's own programs only: a `tail -f` of a node's log names the folder too.
        ours = p.info["name"] in RAY_DAEMONS or f"{os.sep}ray{os.sep}" in cmd
        if ours and marker in cmd:
            found.append(Proc(p.info["pid"], p.info["create_time"], p.info["name"] or ""))
    return found


def _start_node(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    with log.open("w") as out:
        # Its own session: a Ctrl-C in the caller's terminal must not reach the daemons.
        rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, start_new_session=True)
    if rc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise ClusterError(f"`{' '.join(cmd[:3])} …` failed (exit {rc.returncode}); {log}:\n{tail}")


# ---------------------------------------------------------------- start / stop / status
def start(
    state_dir: str | Path,
    *,
    nodes: int = 2,
    num_cpus: int = 1,
    num_gpus: int | None = None,
    object_store_mb: int = 512,
    timeout: float = 120.0,
) -> Cluster:
    """Start a head and ``nodes - 1`` worker nodes, each with ``num_cpus`` CPUs.

    Args:
        state_dir: our folder: the token, ``cluster.json`` and one Ray temp dir per node.
        num_gpus: GPUs per node; ``None`` lets Ray detect them.
        object_store_mb: object store per node (Ray's default, 30 % of RAM, is much for a
            machine several people share).

    Raises:
        ClusterError: a cluster recorded in ``state_dir`` still runs, the path is too long for
            Ray's sockets, or a node failed to start (the nodes already up are stopped).
    """
    state = Path(state_dir).resolve()
    if nodes < 1 or num_cpus < 1:
        raise ClusterError("need at least one node and one CPU per node")
    if (old := Cluster.load(state)) is not None and any(p.process() for n in old.nodes for p in n.procs):
        raise ClusterError(f"a cluster started from {state} still runs at {old.address}; stop it first")
    if len(str(state / "n0")) + SOCKET_SUFFIX_LEN > SOCKET_PATH_MAX:
        raise ClusterError(f"{state} is too long a path for Ray's Unix sockets; choose a shorter state folder")
    state.mkdir(parents=True, exist_ok=True)
    token = _token(state)
    env = _node_env(token)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--disable-usage-stats"]
    common += ["--object-store-memory", str(object_store_mb * 1024**2)]
    if num_gpus is not None:
        common += ["--num-gpus", str(num_gpus)]
    cluster = Cluster(str(state), "", str(token), num_cpus, [], time.time())
    try:
        for i in range(nodes):
            temp_dir = state / f"n{i}"
            shutil.rmtree(temp_dir, ignore_errors=True)  # a previous run's sessions and sockets
            if i == 0:
                cmd = [_ray_executable(), "start", "--head", "--port", "0", "--include-dashboard", "false"]
            else:
                # One log monitor per machine is enough (Ray's advice); drivers here do not stream logs.
                cmd = [_ray_executable(), "start", "--address", cluster.address, "--include-log-monitor", "false"]
            _start_node([*cmd, *common, "--temp-dir", str(temp_dir)], env, state / f"n{i}.start.log", timeout)
            node = Node(f"n{i}", str(temp_dir), head=i == 0, procs=_processes_under(str(temp_dir)))
            cluster.nodes.append(node)
            if i == 0:
                # `ray start --head --port 0` picks a free port and writes "<node ip>:<port>" here.
                port = (temp_dir / "ray_current_cluster").read_text().strip().rsplit(":", 1)[1]
                cluster.address = f"127.0.0.1:{port}"
            cluster.save()
    except BaseException:
        _stop(cluster)
        raise
    return cluster


def _group(procs: list[psutil.Process]) -> tuple[list, list, list]:
    """Ray's stop order: raylets first (agents fate-share with them), the GCS last."""
    raylets = [p for p in procs if _name(p) == "raylet"]
    gcs = [p for p in procs if _name(p) == "gcs_server"]
    return raylets, [p for p in procs if p not in raylets and p not in gcs], gcs


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def _terminate(procs: list[psutil.Process], grace: float) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + 5.0  # SIGKILL is not instantaneous on a loaded machine either
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _running(p: psutil.Process) -> bool:
    # Zombies count as gone: this machine's init does not always reap orphans at once.
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cluster_processes(cluster: Cluster) -> list[psutil.Process]:
    """Our recorded daemons still alive, and every descendant (workers, agents) of theirs."""
    roots = [p for n in cluster.nodes for proc in n.procs if (p := proc.process()) is not None]
    found: dict[int, psutil.Process] = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    return [p for p in found.values() if _running(p)]


def _stop(cluster: Cluster, grace: float = 10.0) -> int:
    procs = _cluster_processes(cluster)
    for bucket in _group(procs):
        if bucket:
            _terminate(bucket, grace)
    return len(procs)


def stop(state_dir: str | Path, *, grace: float = 10.0, clean: bool = False) -> int:
    """Stop the cluster recorded in ``state_dir`` — its processes only. Returns how many were signalled.

    ``clean`` also deletes the nodes' temp dirs (logs included); the token stays for the next start.
    """
    state = Path(state_dir).resolve()
    cluster = Cluster.load(state)
    n = _stop(cluster, grace) if cluster is not None else 0
    (state / STATE_FILE).unlink(missing_ok=True)
    if clean and cluster is not None:
        for node in cluster.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
    return n


def status(state_dir: str | Path) -> dict:
    """Per node: recorded daemons alive, and the Ray worker processes under its raylet."""
    cluster = Cluster.load(Path(state_dir).resolve())
    if cluster is None:
        return {"running": False, "state_dir": str(Path(state_dir).resolve())}
    nodes = []
    for node in cluster.nodes:
        alive = [p for proc in node.procs if (p := proc.process()) is not None]
        raylet = next((p for p in alive if _name(p) == "raylet"), None)
        children = raylet.children() if raylet is not None else []
        workers = [c for c in children if _running(c) and "Agent" not in _cmdline(c)]  # not the node's agents
        nodes.append(
            {
                "name": node.name,
                "head": node.head,
                "daemons": f"{len(alive)}/{len(node.procs)}",
                "worker_processes": len(workers),
            }
        )
    running = all(n["daemons"].split("/")[0] != "0" for n in nodes)
    return {"running": running, "address": cluster.address, "num_cpus_per_node": cluster.num_cpus, "nodes": nodes}


@contextmanager
def running_cluster(state_dir: str | Path, **kwargs) -> Iterator[Cluster]:
    """:func:`start`, then :func:`stop` (and clean) whatever happens."""
    cluster = start(state_dir, **kwargs)
    try:
        yield cluster
    finally:
        stop(state_dir, clean=True)


# ---------------------------------------------------------------- CLI (scripts/ray_cluster.sh)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ray_cluster.sh", description="A Ray head + worker nodes on this machine.")
    ap.add_argument("command", choices=["start", "stop", "status"])
    ap.add_argument("--dir", default=os.environ.get("HPE_RAY_DIR", ".run/ray"), help="state folder (HPE_RAY_DIR)")
    ap.add_argument("--nodes", type=int, default=2, help="head + workers")
    ap.add_argument("--num-cpus", type=int, default=1, help="CPUs per node")
    ap.add_argument("--num-gpus", type=int, default=None, help="GPUs per node (default: Ray detects)")
    ap.add_argument("--object-store-mb", type=int, default=512)
    ap.add_argument("--clean", action="store_true", help="stop: delete the nodes' logs too")
    args = ap.parse_args(argv)
    if args.command == "start":
        try:
            c = start(
                args.dir,
                nodes=args.nodes,
                num_cpus=args.num_cpus,
                num_gpus=args.num_gpus,
                object_store_mb=args.object_store_mb,
            )
        except ClusterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(
            f"Ray cluster up: {len(c.nodes)} nodes × {c.num_cpus} CPU at {c.address}; logs in {c.state_dir}/n*/",
            file=sys.stderr,
        )
        print(c.exports())  # stdout: eval "$(scripts/ray_cluster.sh start)"
    elif args.command == "stop":
        n = stop(args.dir, clean=args.clean)
        print(f"stopped {n} Ray processes started from {Path(args.dir).resolve()}", file=sys.stderr)
    else:
        info = status(args.dir)
        print(json.dumps(info, indent=1))
        return 0 if info["running"] else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
