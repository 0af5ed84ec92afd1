#!/usr/bin/env bash
# Start/stop the project's own Prefect server: SQLite under .prefect/, bound to 127.0.0.1.
# (The ephemeral API hits SQLite lock errors under load.)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_PORT:=4200}"
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:${PREFECT_PORT}/api}"
mkdir -p .run "$PREFECT_HOME"
PIDFILE=.run/prefect-server.pid

healthy() { curl -sf "${PREFECT_API_URL}/health" >/dev/null 2>&1; }

case "${1:-start}" in
  start)
    if healthy; then echo "Prefect server already up at ${PREFECT_API_URL%/api}"; exit 0; fi
    echo "starting Prefect server on 127.0.0.1:${PREFECT_PORT} (log: .run/prefect-server.log)"
    nohup .venv/bin/prefect server start --host 127.0.0.1 --port "${PREFECT_PORT}" \
      > .run/prefect-server.log 2>&1 &
    echo $! > "$PIDFILE"
    for _ in $(seq 1 180); do
      if healthy; then echo "Prefect server up"; exit 0; fi
      if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        echo "Prefect server exited; last log lines:" >&2; tail -20 .run/prefect-server.log >&2; exit 1
      fi
      sleep 1
    done
    echo "Prefect server did not become healthy in 180 s (.run/prefect-server.log)" >&2; exit 1 ;;
  stop)
    for f in .run/serve.pid "$PIDFILE"; do
      if [[ -f $f ]]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
    done
    echo "Prefect server and deployment runner stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
