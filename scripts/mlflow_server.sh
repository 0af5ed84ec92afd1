#!/usr/bin/env bash
# MLflow tracking server backed by PostgreSQL, both bound to 127.0.0.1: the
# "tracking server with a real database" that MLFLOW_TRACKING_URI points the pipeline at.
#
#   scripts/mlflow_server.sh start|stop|status
#
# Environment (defaults in brackets):
#   HPE_RUN_DIR           state: cluster, socket, pid files, logs, password  [<project>/.run]
#   HPE_PG_PORT           PostgreSQL TCP port on 127.0.0.1                   [5433]
#   HPE_MLFLOW_PORT       MLflow server port on 127.0.0.1                    [5000]
#   HPE_MLFLOW_ARTIFACTS  where the server stores artifacts (it proxies them) [<project>/mlartifacts]
#   HPE_MLFLOW_WORKERS    server worker processes                            [1]
#   HPE_PG_USER           OS user that runs postgres when this runs as root  [postgres]
#   HPE_PG_BIN            folder holding initdb, pg_ctl, psql                [from `initdb` on PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

die() { echo "mlflow_server.sh: $*" >&2; exit 1; }
# Exited: no such process, or a zombie its new parent has not reaped yet (kill -0 succeeds on those).
gone() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) || return 0; [[ $st == Z* ]]; }

RUN=${HPE_RUN_DIR:-$ROOT/.run}
[[ $RUN == /* ]] || RUN=$ROOT/$RUN
PG_PORT=${HPE_PG_PORT:-5433}
MLFLOW_PORT=${HPE_MLFLOW_PORT:-5000}
ARTIFACTS=${HPE_MLFLOW_ARTIFACTS:-$ROOT/mlartifacts}
[[ $ARTIFACTS == /* ]] || ARTIFACTS=$ROOT/$ARTIFACTS
WORKERS=${HPE_MLFLOW_WORKERS:-1}
MLFLOW=${HPE_MLFLOW_BIN:-$ROOT/.venv/bin/mlflow}

for v in PG_PORT MLFLOW_PORT; do
  p=${!v}
  [[ $p =~ ^[0-9]+$ ]] && (( p >= 1 && p <= 65535 )) || die "HPE_$v=$p is not a port number (1-65535)"
done
[[ $PG_PORT != "$MLFLOW_PORT" ]] || die "HPE_PG_PORT and HPE_MLFLOW_PORT are both $PG_PORT"
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "HPE_MLFLOW_WORKERS=$WORKERS is not a positive integer"

# The Debian packages keep the server binaries off PATH (/usr/local/bin/initdb is a link to them);
# psql, pg_ctl and initdb are taken from one folder so their versions match.
if [[ -z ${HPE_PG_BIN:-} ]]; then
  find_initdb() { command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1 || true; }
  initdb_path=$(find_initdb)
  # A fresh Debian machine (CI) may lack the server: as root, install Debian's package (the
  # project's own files install what it needs); otherwise say what to install.
  if [[ -z $initdb_path && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "PostgreSQL not found: installing Debian's postgresql package"
    (export DEBIAN_FRONTEND=noninteractive
     apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 \
       || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends postgresql >/dev/null; }) \
      || die "apt-get install postgresql failed"
    initdb_path=$(find_initdb)
  fi
  [[ -n $initdb_path ]] || die "PostgreSQL not found: install it (Debian: apt-get install postgresql), put initdb on PATH or set HPE_PG_BIN"
  HPE_PG_BIN=$(dirname "$(readlink -f "$initdb_path")")
fi
PG_BIN=$HPE_PG_BIN
for b in initdb pg_ctl psql; do [[ -x $PG_BIN/$b ]] || die "$PG_BIN/$b missing (set HPE_PG_BIN)"; done

PGROOT=$RUN/postgres
PGDATA=$PGROOT/data
SOCK=$PGROOT/socket
PGLOG=$PGROOT/postgres.log
PASSFILE=$RUN/mlflow-db.password   # the mlflow role's password, 0600, generated once
PGPASSFILE_=$RUN/mlflow.pgpass     # libpq password file: keeps the password out of argv / ps
PIDFILE=$RUN/mlflow-server.pid
LOG=$RUN/mlflow-server.log
URL=http://127.0.0.1:$MLFLOW_PORT

# A unix socket path must fit in 107 bytes; a deep HPE_RUN_DIR would fail inside postgres.
(( ${#SOCK} + 20 <= 107 )) || die "HPE_RUN_DIR too deep for postgres' unix socket ($SOCK): use a shorter path"

# postgres refuses to run as root. As root, run it as an unprivileged OS user (the Debian
# package's `postgres` by default) through runuser; the mlflow server itself stays as the caller.
if [[ $(id -u) == 0 ]]; then
  PG_USER=${HPE_PG_USER:-postgres}
  id "$PG_USER" >/dev/null 2>&1 || die "running as root, and postgres will not run as root: create an
  unprivileged user for it (useradd --system --no-create-home --shell /usr/sbin/nologin $PG_USER) or set HPE_PG_USER"
  # cd /: the caller's working directory may be unreadable to that user.
  as_pg() { (cd / && runuser -u "$PG_USER" -- "$@"); }
else
  PG_USER=$(id -un)
  as_pg() { "$@"; }
fi

pg_running() { [[ -f $PGDATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
mlflow_healthy() { curl -sf "$URL/health" >/dev/null 2>&1; }
mlflow_pid_alive() { [[ -f $PIDFILE ]] && ! gone "$(cat "$PIDFILE")"; }
# Admin SQL over the unix socket (trust auth; the socket folder is 0700, owned by the postgres user).
psql_admin() { as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PG_PORT" -U postgres -d postgres "$@"; }

start_postgres() {
  mkdir -p "$RUN"
  if [[ ! -f $PGDATA/PG_VERSION ]]; then
    echo "initialising PostgreSQL cluster in $PGDATA"
    mkdir -p "$PGROOT"
    if [[ $(id -u) == 0 ]]; then chown "$PG_USER" "$PGROOT"; fi
    chmod 700 "$PGROOT"
    as_pg test -w "$PGROOT" || die "$PG_USER cannot write $PGROOT: every parent folder of HPE_RUN_DIR must be
  traversable by $PG_USER (chmod o+x), or choose another HPE_RUN_DIR"
    # Local socket: trust (only the owner can reach the 0700 socket folder). TCP: passwords only.
    as_pg "$PG_BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
      --auth-local=trust --auth-host=scram-sha-256 > "$RUN/initdb.log" 2>&1 \
      || { tail -20 "$RUN/initdb.log" >&2; die "initdb failed ($RUN/initdb.log)"; }
    echo "include_if_exists = 'hpe.conf'" | as_pg tee -a "$PGDATA/postgresql.conf" >/dev/null
  fi
  if pg_running; then echo "PostgreSQL already running ($PGDATA)"; return; fi
  as_pg mkdir -p "$SOCK"
  as_pg chmod 700 "$SOCK"
  # Rewritten at every start so HPE_PG_PORT / HPE_RUN_DIR changes take effect; loopback only.
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$PG_PORT" "$SOCK" \
    | as_pg tee "$PGDATA/hpe.conf" >/dev/null
  echo "starting PostgreSQL on 127.0.0.1:$PG_PORT as $PG_USER (log: $PGLOG)"
  as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 start >/dev/null \
    || { tail -20 "$PGLOG" >&2; die "PostgreSQL did not start (port $PG_PORT in use? log: $PGLOG)"; }
}

ensure_database() {
  if [[ ! -s $PASSFILE ]]; then
    (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$PASSFILE")
  fi
  local pw
  pw=$(cat "$PASSFILE")
  [[ $pw =~ ^[0-9a-f]+$ ]] || die "$PASSFILE: unexpected content (delete it to generate a new password)"
  # The password is re-set at each start, so the role and the file can never drift apart.
  if [[ -z $(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'mlflow'") ]]; then
    psql_admin -c "CREATE ROLE mlflow LOGIN PASSWORD '$pw'"
  else
    psql_admin -c "ALTER ROLE mlflow PASSWORD '$pw'"
  fi
  if [[ -z $(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'mlflow'") ]]; then
    psql_admin -c "CREATE DATABASE mlflow OWNER mlflow"
  fi
  (umask 077 && echo "127.0.0.1:$PG_PORT:mlflow:mlflow:$pw" > "$PGPASSFILE_")
}

start_mlflow() {
  if mlflow_pid_alive && mlflow_healthy; then echo "MLflow server already up at $URL"; return; fi
  mlflow_healthy && die "something else already answers on $URL (set HPE_MLFLOW_PORT)"
  [[ -x $MLFLOW ]] || die "$MLFLOW not found (make install, or set HPE_MLFLOW_BIN)"
  mkdir -p "$ARTIFACTS"
  echo "starting MLflow server on $URL (log: $LOG, artifacts: $ARTIFACTS)"
  # setsid: the server forks its web workers; its own process group lets `stop` end them all.
  # Job execution (GenAI scorers, trace roll-ups; unused here) would add eight huey consumer
  # processes on a two-core machine: off unless the caller turns it on.
  export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
  # +psycopg2: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2.
  PGPASSFILE=$PGPASSFILE_ setsid nohup "$MLFLOW" server \
    --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
    --serve-artifacts --artifacts-destination "$ARTIFACTS" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$WORKERS" > "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  # The first start creates the schema (alembic migrations): allow a couple of minutes.
  for _ in $(seq 1 240); do
    if mlflow_healthy; then echo "MLflow server up"; return; fi
    if ! mlflow_pid_alive; then
      tail -20 "$LOG" >&2; die "MLflow server exited (log: $LOG)"
    fi
    sleep 0.5
  done
  die "MLflow server not healthy after 120 s (log: $LOG)"
}

stop_mlflow() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  if ! gone "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do gone "$pid" && break; sleep 0.5; done
    if ! gone "$pid"; then
      kill -KILL -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do gone "$pid" && break; sleep 0.5; done
    fi
  fi
  rm -f "$PIDFILE"
  echo "MLflow server stopped"
}

stop_postgres() {
  if pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    echo "PostgreSQL stopped"
  fi
}

case "${1:-start}" in
  start)
    start_postgres
    ensure_database
    start_mlflow
    echo "export MLFLOW_TRACKING_URI=$URL" ;;
  stop)
    stop_mlflow
    stop_postgres ;;
  status)
    rc=0
    if pg_running; then echo "PostgreSQL: running on 127.0.0.1:$PG_PORT ($PGDATA)"; else echo "PostgreSQL: stopped"; rc=3; fi
    if mlflow_healthy; then echo "MLflow server: up at $URL"; else echo "MLflow server: down"; rc=3; fi
    exit $rc ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
