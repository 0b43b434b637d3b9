#!/usr/bin/env bash
# The local stack: Postgres, Kafka (KRaft) and the S3 server, started in parallel.
# usage: stack.sh up|down|status
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/stack/common.sh"
SERVICES=(postgres kafka s3)
# A second stack can run beside the first: STACK_DIR, POSTGRES_PORT, KAFKA_PORT, S3_PORT.
# The clients (create-topics here, the worker, the tests) follow those ports unless told otherwise.
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export MINIO_ENDPOINT="${MINIO_ENDPOINT:-http://127.0.0.1:${S3_PORT:-9000}}"

up() {
  local t0=$SECONDS pids=() rc=0 svc
  for svc in "${SERVICES[@]}"; do
    bash "$here/stack/$svc.sh" up >"$STACK/$svc.up.out" 2>&1 &
    pids+=($!)
  done
  for i in "${!SERVICES[@]}"; do
    if ! wait "${pids[$i]}"; then rc=1; fi
    cat "$STACK/${SERVICES[$i]}.up.out"
  done
  [ "$rc" = 0 ] || { echo "ERROR: the stack did not come up (see the messages above)" >&2; exit 1; }
  # Topics through the admin API (fast, idempotent); needs the project's virtualenv.
  "$ROOT/.venv/bin/exchange-stream" create-topics
  say "stack      up in $((SECONDS - t0)) s; data and logs under $STACK"
}

down() {
  local svc
  for svc in "${SERVICES[@]}"; do bash "$here/stack/$svc.sh" down; done
}

status() {
  local svc rc=0
  for svc in "${SERVICES[@]}"; do
    if bash "$here/stack/$svc.sh" status; then say "$svc: up"; else say "$svc: DOWN"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
