#!/usr/bin/env bash
# S3-compatible object store for the exchange-stream stack: Versity S3 Gateway
# (versitygw, Apache-2.0) with its POSIX backend, i.e. a single Go process that
# keeps every object as a plain file on disk. No Docker, no MinIO: the binary is
# built once from the Go module proxy with `go install module@version`.
#
#   bash scripts/stack/s3.sh up      # build once, start, wait until it answers, create the bucket
#   bash scripts/stack/s3.sh down    # SIGTERM, wait, SIGKILL after S3_STOP_TIMEOUT s; keeps data
#   bash scripts/stack/s3.sh status  # exit 0 if the server answers, else 1
#
# Files (all git-ignored):
#   .cache/bin/versitygw            the binary (its --version prints the pinned version)
#   .stack/s3/data/<bucket>/<key>   objects: key "partnerA/x.json" is the file raw-objects/partnerA/x.json;
#                                   metadata (ETag, content-type, ACL) lives in user.* xattrs
#   .stack/s3.pid                   server pid
#   .stack/logs/s3.log              server stdout/stderr, appended
#   .stack/logs/s3-build.log        output of the last build
#
# Environment:
#   S3_PORT (9000)  RAW_BUCKET (raw-objects)  MINIO_ACCESS_KEY / MINIO_SECRET_KEY (minioadmin)
#   S3_REGION (us-east-1)  S3_UP_TIMEOUT (60 s)  S3_STOP_TIMEOUT (15 s)
#   S3_REQUEST_LOG=1  log every request to s3.log (off by default: load tests would flood it)
#   GO (go on PATH, else /usr/local/go/bin/go)  VERSITYGW_VERSION (pinned below; change with care)
#
# Client notes (aioboto3/botocore): endpoint_url=http://127.0.0.1:$S3_PORT, region us-east-1,
# path-style addressing. botocore >= 1.36's default CRC32 checksums are accepted as is.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

VERSITYGW_MODULE=github.com/versity/versitygw
VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"

S3_HOST=127.0.0.1
S3_PORT="${S3_PORT:-9000}"
S3_REGION="${S3_REGION:-us-east-1}"
RAW_BUCKET="${RAW_BUCKET:-raw-objects}"
ACCESS_KEY="${MINIO_ACCESS_KEY:-minioadmin}"
SECRET_KEY="${MINIO_SECRET_KEY:-minioadmin}"
S3_UP_TIMEOUT="${S3_UP_TIMEOUT:-60}"
S3_STOP_TIMEOUT="${S3_STOP_TIMEOUT:-15}"
S3_URL="http://$S3_HOST:$S3_PORT"
# GET on this path answers 200 "OK" without auth. A leading "_" can never be a
# bucket name, so it cannot shadow a ListObjects call.
HEALTH_PATH=/_health

BIN_DIR="$ROOT/.cache/bin"
BIN="$BIN_DIR/versitygw"
STACK="${STACK_DIR:-$ROOT/.stack}"
S3_DIR="$STACK/s3"
DATA="$S3_DIR/data"
PIDFILE="$STACK/s3.pid"
LOG_DIR="$STACK/logs"
LOG="$LOG_DIR/s3.log"
BUILD_LOG="$LOG_DIR/s3-build.log"
LOCKFILE="$STACK/s3.lock"
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

say() { printf '%-11s%s\n' s3 "$*"; }
err() { printf 'ERROR: %s\n' "$*" >&2; }

fail_up() {
  {
    echo "ERROR: s3 did not come up; log: $LOG"
    [[ -f "$LOG" ]] && tail -n 30 "$LOG"
  } >&2
  exit 1
}

lock() {
  mkdir -p "$STACK" "$LOG_DIR"
  exec 9>"$LOCKFILE"
  flock -w 600 9 || { err "another s3.sh holds $LOCKFILE"; exit 1; }
}

# ---------------------------------------------------------------- build ----

find_go() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return 0; fi
  if command -v go >/dev/null 2>&1; then command -v go; return 0; fi
  if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return 0; fi
  return 1
}

have_binary() {
  [[ -x "$BIN" ]] || return 1
  local v; v="$("$BIN" --version 2>/dev/null)" || return 1
  grep -qx "Version *: *$VERSITYGW_VERSION" <<<"$v"
}

build() {
  have_binary && return 0
  local go tmp start
  go="$(find_go)" || { err "Go is needed to build versitygw (no go on PATH nor /usr/local/go/bin/go; set GO=...)"; exit 1; }
  say "building versitygw $VERSITYGW_VERSION from the Go module proxy (with empty Go caches ~3-4 min on 2 cores; log: $BUILD_LOG)"
  mkdir -p "$BIN_DIR"
  # Go's caches default to ~/go and ~/.cache; without a HOME keep them in .cache/.
  if [[ -z "${HOME:-}" ]]; then
    export GOCACHE="${GOCACHE:-$ROOT/.cache/go-build}" GOMODCACHE="${GOMODCACHE:-$ROOT/.cache/go-mod}"
  fi
  tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
  start=$SECONDS
  # Static binary (no C toolchain needed), version stamped so `--version` tells
  # which one is installed. Run from the temp dir so no go.mod/go.work around
  # the repo can interfere.
  if ! (cd "$tmp" && env GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS= GOWORK=off \
        "$go" install -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION -X main.Build=module-proxy" \
        "$VERSITYGW_MODULE/cmd/versitygw@$VERSITYGW_VERSION") >"$BUILD_LOG" 2>&1; then
    rm -rf "$tmp"
    { echo "ERROR: s3 did not come up: building versitygw failed; log: $BUILD_LOG"; tail -n 30 "$BUILD_LOG"; } >&2
    exit 1
  fi
  mv -f "$tmp/versitygw" "$BIN"   # atomic replace: a running server keeps its old inode
  rm -rf "$tmp"
  say "built $BIN in $((SECONDS - start)) s"
}

# ------------------------------------------------------------- process -----

# Does /proc/PID run our server (our binary on our data dir)? Guards against pid reuse.
is_ours() {
  local pid=$1 cmd
  alive "$pid" || return 1
  cmd="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$(head -n1 <<<"$cmd")" == "$BIN" ]] && grep -qxF -- "$DATA" <<<"$cmd"
}

# pid of our server, or nothing. When the pid file is lost or stale, looks at
# the processes named versitygw and keeps only one that is ours (exact binary
# path and data dir), so another checkout's server is never touched.
server_pid() {
  local pid="" p
  [[ -f "$PIDFILE" ]] && pid="$(tr -dc '0-9' <"$PIDFILE" || true)"
  if [[ -n "$pid" ]] && is_ours "$pid"; then echo "$pid"; return 0; fi
  for p in $(pgrep -x versitygw 2>/dev/null || true); do
    if is_ours "$p"; then echo "$p" >"$PIDFILE"; echo "$p"; return 0; fi
  done
  rm -f "$PIDFILE"
  return 0
}

# Live and not a zombie (an exited child of ours, or an orphan that PID 1 has
# not reaped yet, still passes `kill -0`).
alive() {
  local st
  st="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z && "$st" != X ]]
}

answering() {
  [[ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$S3_URL$HEALTH_PATH" 2>/dev/null)" == 200 ]]
}

port_open() { (exec 3<>"/dev/tcp/$S3_HOST/$S3_PORT") 2>/dev/null; }

# s3_call METHOD PATH -> prints the HTTP status of a SigV4-signed request.
s3_call() {
  local method=(-X "$1")
  [[ "$1" == HEAD ]] && method=(-I)   # -X HEAD would wait for a body that never comes
  curl -s -m 10 -o /dev/null -w '%{http_code}' "${method[@]}" \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "$S3_URL$2" 2>/dev/null || true
}

start_server() {
  mkdir -p "$DATA" "$LOG_DIR"
  # Keep the log bounded across many restarts.
  if [[ -f "$LOG" && $(stat -c %s "$LOG") -gt 20000000 ]]; then mv -f "$LOG" "$LOG.1"; fi
  local quiet=(--quiet)
  [[ "${S3_REQUEST_LOG:-0}" == 1 ]] && quiet=()
  echo "=== $(date '+%F %T') starting versitygw $VERSITYGW_VERSION on $S3_HOST:$S3_PORT, data $DATA" >>"$LOG"
  # Credentials through the environment (not argv, so `ps` does not show them).
  # setsid: own session, so the caller's Ctrl-C / exit does not take it down.
  # Close every inherited fd above 2 first: the server must not hold our lock
  # (fd 9) nor a caller's pipe (a `$(s3.sh up)` would otherwise never see EOF).
  (
    for fd in "/proc/$BASHPID/fd"/*; do
      fd="${fd##*/}"; [[ "$fd" -gt 2 ]] && eval "exec $fd>&-" 2>/dev/null
    done
    cd "$S3_DIR" && exec env ROOT_ACCESS_KEY_ID="$ACCESS_KEY" ROOT_ACCESS_KEY="$ACCESS_KEY" \
      ROOT_SECRET_ACCESS_KEY="$SECRET_KEY" ROOT_SECRET_KEY="$SECRET_KEY" \
      setsid "$BIN" --port "$S3_HOST:$S3_PORT" --region "$S3_REGION" \
        --health "$HEALTH_PATH" --keep-alive "${quiet[@]}" \
        posix "$DATA"
  ) </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
}

ensure_bucket() {
  local code
  code="$(s3_call HEAD "/$RAW_BUCKET")"
  [[ "$code" == 200 ]] && return 0
  code="$(s3_call PUT "/$RAW_BUCKET")"
  # 409 = BucketAlreadyOwnedByYou / BucketAlreadyExists (a concurrent creator won)
  [[ "$code" == 200 || "$code" == 409 ]] || { err "creating bucket $RAW_BUCKET answered HTTP $code"; return 1; }
  [[ "$(s3_call HEAD "/$RAW_BUCKET")" == 200 ]]
}

# ------------------------------------------------------------- commands ----

up() {
  lock
  command -v curl >/dev/null || { err "curl is needed"; exit 1; }
  build
  local pid; pid="$(server_pid)"
  if [[ -n "$pid" ]] && ! tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "$S3_HOST:$S3_PORT"; then
    err "our s3 server (pid $pid) runs on another port than $S3_PORT; run 'down' first"; exit 1
  fi
  if [[ -z "$pid" ]]; then
    if port_open; then
      if answering; then
        err "port $S3_PORT already has an S3 server that is not ours ($DATA); using it"
      else
        err "port $S3_PORT is taken by another process; stop it or set S3_PORT"; fail_up
      fi
    else
      start_server
      pid="$(cat "$PIDFILE")"
    fi
  fi
  local deadline=$((SECONDS + S3_UP_TIMEOUT))
  until answering; do
    if [[ -n "$pid" ]] && ! alive "$pid"; then rm -f "$PIDFILE"; fail_up; fi
    [[ $SECONDS -ge $deadline ]] && fail_up
    sleep 0.1
  done
  ensure_bucket || fail_up
  say "ready on $S3_URL (versitygw $VERSITYGW_VERSION, bucket $RAW_BUCKET)"
}

down() {
  lock
  local pid; pid="$(server_pid)"
  if [[ -z "$pid" ]]; then say "stopped (was not running)"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + S3_STOP_TIMEOUT))
  while alive "$pid"; do
    if [[ $SECONDS -ge $deadline ]]; then
      err "s3 did not stop within ${S3_STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
    sleep 0.05
  done
  rm -f "$PIDFILE"
  say "stopped"
}

status() { answering; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
