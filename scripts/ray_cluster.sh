#!/usr/bin/env bash
# A Ray cluster of a head and a worker node on this machine, for rehearsing multi-node runs:
#   eval "$(scripts/ray_cluster.sh start)"   # prints export RAY_ADDRESS=… (+ the auth token's env)
#   scripts/ray_cluster.sh status
#   scripts/ray_cluster.sh stop              # stops only the processes this script started
# Options (after the command): --nodes N, --num-cpus C (per node), --num-gpus G, --dir D
# (state folder, default .run/ray or $HPE_RAY_DIR), stop --clean. Details: docs/cluster.md.
# Never `ray stop` here: it kills every Ray process on the machine, other people's included.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" -m pipeline.raynodes "$@"
