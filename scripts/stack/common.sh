# Shared helpers for the stack scripts; sourced, not run.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STACK="${STACK_DIR:-$ROOT/.stack}"
LOGS="$STACK/logs"
CACHE="$ROOT/.cache"
mkdir -p "$STACK" "$LOGS" "$CACHE"

say() { printf '%s\n' "$*"; }

# fail SERVICE LOGFILE: the loud failure every script ends with when a service does not answer.
fail() {
  local svc=$1 logfile=$2
  {
    echo "ERROR: $svc did not come up; log: $logfile"
    [ -f "$logfile" ] && tail -n 30 "$logfile"
  } >&2
  exit 1
}

# wait_until SECONDS CMD...: retry CMD every 0.25 s until it succeeds or time runs out.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.25
  done
}

# pid_alive PIDFILE: the pid in PIDFILE is a live process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pid NAME PIDFILE GRACE: SIGTERM, wait up to GRACE seconds, then SIGKILL.
stop_pid() {
  local name=$1 pidfile=$2 grace=$3 pid
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; say "$name stopped (was not running)"; return 0; fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    sleep 0.1
  done
  rm -f "$pidfile"
  say "$name stopped"
}
