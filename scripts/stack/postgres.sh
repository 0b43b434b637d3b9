#!/usr/bin/env bash
# Postgres from Debian's packages, run as the `postgres` OS user with data under .stack/postgres.
# usage: postgres.sh up|down|status
set -euo pipefail
source "$(dirname "$0")/common.sh"

PORT=${POSTGRES_PORT:-5432}
DB=${POSTGRES_DB:-exchange}
USER_NAME=${POSTGRES_USER:-exchange}
PASSWORD=${POSTGRES_PASSWORD:-exchange}
PGDIR="$STACK/postgres"
DATA="$PGDIR/data"
LOG="$LOGS/postgres.log"

find_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

install_postgres() {
  say "postgres   installing from Debian's packages (first run on this machine)"
  # Keep the package's own cluster from starting on our port: policy-rc.d 101 = "do not start".
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql >/dev/null
  [ "$created" = 1 ] && rm -f "$policy"
  # The package may create a default cluster; stop it if anything started it.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
      pg_ctlcluster "$v" "$c" stop || true
    done
  fi
}

as_pg() { runuser -u postgres -- "$@"; }

# The postgres user must be able to reach .stack; a private parent (mktemp -d) blocks it.
ensure_traversable() {
  local d="$PGDIR"
  as_pg test -x "$d" 2>/dev/null && return 0
  while [ "$d" != "/" ]; do
    d=$(dirname "$d")
    [ -d "$d" ] && chmod o+x "$d"
  done
  as_pg test -x "$PGDIR" || { echo "ERROR: user postgres cannot reach $PGDIR" >&2; exit 1; }
}

socket_dir() {
  # Unix socket paths are limited to ~107 bytes; fall back to /tmp for deep checkouts.
  local s="$PGDIR/run"
  if [ ${#s} -gt 90 ]; then s="/tmp/exchange-stream-pg-$(echo -n "$PGDIR" | md5sum | cut -c1-8)"; fi
  echo "$s"
}

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

up() {
  BIN=$(find_bin) || { install_postgres; BIN=$(find_bin); }
  mkdir -p "$PGDIR"
  id postgres >/dev/null 2>&1 || { echo "ERROR: no postgres OS user after install" >&2; exit 1; }
  local sock; sock=$(socket_dir)
  mkdir -p "$sock"; touch "$LOG"
  chown postgres:postgres "$PGDIR" "$sock" "$LOG"
  ensure_traversable
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "postgres   initialising a cluster in $DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >>"$LOG" 2>&1 || fail postgres "$LOG"
    cat >>"$DATA/postgresql.conf" <<CONF
# exchange-stream local stack
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$sock'
max_connections = 300
shared_buffers = 256MB
logging_collector = off
CONF
  fi
  if ready; then
    say "postgres   already running on 127.0.0.1:$PORT"
  else
    if ss -ltn 2>/dev/null | grep -q ":$PORT "; then
      echo "ERROR: port $PORT is taken by another process; stop it or set POSTGRES_PORT" >&2; exit 1
    fi
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "-p $PORT -k $sock" -w -t 60 start >/dev/null \
      || fail postgres "$LOG"
    wait_until 30 ready || fail postgres "$LOG"
  fi
  # Role and database, idempotently (over the socket as the superuser).
  local psql=("$BIN/psql" -h "$sock" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
  if [ "$(as_pg "${psql[@]}" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname='$USER_NAME'")" != 1 ]; then
    as_pg "${psql[@]}" -d postgres -c "CREATE ROLE \"$USER_NAME\" LOGIN PASSWORD '$PASSWORD'" >/dev/null
  fi
  # CREATEDB lets the tests make throw-away databases (e.g. to migrate a blank schema), and
  # CREATEROLE a login with a non-default password (the tests' ENV=staging worker).
  as_pg "${psql[@]}" -d postgres -c "ALTER ROLE \"$USER_NAME\" CREATEDB CREATEROLE" >/dev/null
  if [ "$(as_pg "${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
    as_pg "${psql[@]}" -d postgres -c "CREATE DATABASE \"$DB\" OWNER \"$USER_NAME\"" >/dev/null
  fi
  say "postgres   ready on 127.0.0.1:$PORT (PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), db/user $DB)"
}

down() {
  BIN=$(find_bin) || { say "postgres   not installed"; return 0; }
  if [ -f "$DATA/postmaster.pid" ]; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 || true
  fi
  say "postgres   stopped"
}

status() { BIN=$(find_bin) && ready; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
