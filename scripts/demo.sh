#!/usr/bin/env bash
# The README's first command (via `make demo`): Prefect server → serve deployment hpe/full →
# `prefect deployment run hpe/full --watch` → per-stage wall time, peak memory, where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
bash scripts/prefect_server.sh start

# The deployment runner: executes runs of hpe/full in subprocesses of this process.
if [[ -f .run/serve.pid ]] && kill -0 "$(cat .run/serve.pid)" 2>/dev/null; then
  echo "deployment runner already serving hpe/full"
else
  nohup python -m flows.serve > .run/serve.log 2>&1 &
  echo $! > .run/serve.pid
fi
for _ in $(seq 1 120); do
  if prefect deployment inspect hpe/full >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat .run/serve.pid)" 2>/dev/null; then
    echo "deployment runner exited; last log lines:" >&2; tail -20 .run/serve.log >&2; exit 1
  fi
  sleep 1
done

start=$(date +%s)
prefect deployment run hpe/full --watch
echo
echo "pipeline finished in $(( $(date +%s) - start )) s"
hpe summary
