#!/usr/bin/env bash
# Prefect work pool + process worker, the alternative to `serve` (flows/serve.py, scripts/demo.sh):
# creates the process work pool, deploys flow `hpe` as `full` to it (prefect.yaml), starts
# `prefect worker start --pool`. Runs are then started as usual: `prefect deployment run hpe/full`.
#
#   scripts/prefect_worker.sh start|stop|status
#
# Environment (defaults in brackets):
#   PREFECT_API_URL     the Prefect server           [http://127.0.0.1:${PREFECT_PORT:-4200}/api]
#                       (the project's server is started when nothing answers there)
#   PREFECT_HOME        Prefect's local state        [<project>/.prefect]
#   HPE_RUN_DIR         worker pid file and log      [<project>/.run]
#   HPE_WORK_POOL       work pool name               [hpe-pool]
#   HPE_WORKER_LIMIT    flow runs at once per worker [1: the runs of one project share a DVC lock]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

die() { echo "prefect_worker.sh: $*" >&2; exit 1; }
# Exited: no such process, or a zombie its new parent has not reaped yet (kill -0 succeeds on those).
gone() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 0; [[ $st == Z* ]]; }

: "${PREFECT_PORT:=4200}"
export PREFECT_HOME=${PREFECT_HOME:-$ROOT/.prefect}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:${PREFECT_PORT}/api}
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
export DO_NOT_TRACK=${DO_NOT_TRACK:-1}
# Flow runs call `dvc` and `hpe`, which live in the venv.
export PATH=$ROOT/.venv/bin:$PATH
RUN=${HPE_RUN_DIR:-$ROOT/.run}
[[ $RUN == /* ]] || RUN=$ROOT/$RUN
POOL=${HPE_WORK_POOL:-hpe-pool}
LIMIT=${HPE_WORKER_LIMIT:-1}
PIDFILE=$RUN/prefect-worker.pid
LOG=$RUN/prefect-worker.log
PREFECT=$ROOT/.venv/bin/prefect

[[ $LIMIT =~ ^[1-9][0-9]*$ ]] || die "HPE_WORKER_LIMIT=$LIMIT is not a positive integer"
[[ $POOL =~ ^[A-Za-z0-9_.-]+$ ]] || die "HPE_WORK_POOL=$POOL: use letters, digits, '.', '_' or '-'"
[[ -x $PREFECT ]] || die "$PREFECT not found (make install)"

api_healthy() { curl -sf "$PREFECT_API_URL/health" >/dev/null 2>&1; }
worker_alive() { [[ -f $PIDFILE ]] && ! gone "$(cat "$PIDFILE")"; }

case "${1:-start}" in
  start)
    mkdir -p "$RUN"
    if ! api_healthy; then
      [[ $PREFECT_API_URL == "http://127.0.0.1:${PREFECT_PORT}/api" ]] \
        || die "no Prefect server answers at $PREFECT_API_URL"
      bash scripts/prefect_server.sh start
    fi
    if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
      "$PREFECT" work-pool create "$POOL" --type process >/dev/null
      echo "created process work pool $POOL"
    fi
    # Idempotent: re-deploying updates hpe/full in place.
    "$PREFECT" --no-prompt deploy --name full --pool "$POOL" > "$RUN/prefect-deploy.log" 2>&1 \
      || { tail -20 "$RUN/prefect-deploy.log" >&2; die "prefect deploy failed ($RUN/prefect-deploy.log)"; }
    echo "deployed hpe/full to work pool $POOL"
    if worker_alive; then echo "worker already polling $POOL (pid $(cat "$PIDFILE"))"; exit 0; fi
    # setsid: the worker and the flow-run subprocesses it starts share one process group for `stop`.
    setsid nohup "$PREFECT" worker start --pool "$POOL" --type process --limit "$LIMIT" \
      --name "hpe-worker-$(hostname)-$$" > "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 120); do
      if grep -q "started!" "$LOG" 2>/dev/null; then
        echo "worker polling $POOL (log: $LOG); run: prefect deployment run hpe/full --watch"; exit 0
      fi
      worker_alive || { tail -20 "$LOG" >&2; die "worker exited (log: $LOG)"; }
      sleep 0.5
    done
    die "worker did not start in 60 s (log: $LOG)" ;;
  stop)
    if worker_alive; then
      pid=$(cat "$PIDFILE")
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do gone "$pid" && break; sleep 0.5; done
      if ! gone "$pid"; then
        kill -KILL -- "-$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do gone "$pid" && break; sleep 0.5; done
      fi
      echo "worker stopped"
    fi
    rm -f "$PIDFILE" ;;
  status)
    if worker_alive; then echo "worker: polling $POOL (pid $(cat "$PIDFILE"))"; else echo "worker: stopped"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
