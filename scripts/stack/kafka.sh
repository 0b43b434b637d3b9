#!/usr/bin/env bash
# Single-node Apache Kafka broker (KRaft, combined broker+controller) for the
# exchange-stream stack. No Docker, no tarball download: the broker's jars are
# resolved from Maven Central by Maven (scripts/stack/kafka-pom.xml) and run on
# the installed JVM.
#
#   bash scripts/stack/kafka.sh up      # resolve jars once, format once, start, wait until it answers
#   bash scripts/stack/kafka.sh down    # SIGTERM, wait, SIGKILL after KAFKA_STOP_TIMEOUT s; keeps data
#   bash scripts/stack/kafka.sh status  # exit 0 if the broker answers the Kafka protocol, else 1
#
# Files (all git-ignored):
#   .cache/kafka-<version>/libs/   broker jars (+ .complete marker = sha256 of the pom)
#   .cache/kafka-<version>/cds/    AppCDS class-data archive (written by the first clean stop)
#   .cache/kafka-<version>/mvn.log output of the last jar resolution
#   .stack/kafka/config/           generated server.properties, log4j2.properties
#   .stack/kafka/data/             KRaft metadata log + topic data (kept across down/up)
#   .stack/kafka.pid               broker pid
#   .stack/kafka.lock              flock held while up/down run (serialises concurrent calls)
#   .stack/logs/kafka.log          broker stdout/stderr (log4j2 console appender), appended
#
# Environment:
#   KAFKA_PORT (9092)  KAFKA_CONTROLLER_PORT (KAFKA_PORT+1)
#   KAFKA_VERSION (4.4.0; the pom and the log4j2 setup are for Kafka 4.x only;
#     data formatted by a newer Kafka cannot be opened by an older one, so going
#     back to an older version needs 'down' + rm -rf .stack/kafka)
#   KAFKA_UP_TIMEOUT (90 s)  KAFKA_STOP_TIMEOUT (20 s)
#   KAFKA_HEAP_OPTS (-Xms256m -Xmx512m)  KAFKA_JVM_OPTS (extra JVM flags, appended last)
#   KAFKA_CDS (1; 0 = no AppCDS class-data archive)
#   JAVA_HOME / JAVA (java on PATH, 17+)  PYTHON (python3, used for the protocol check)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/stack"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_UP_TIMEOUT="${KAFKA_UP_TIMEOUT:-90}"
KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-20}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_NODE_ID=1

POM="$HERE/kafka-pom.xml"
CACHE_DIR="$ROOT/.cache/kafka-$KAFKA_VERSION"
LIBS="$CACHE_DIR/libs"
MARKER="$LIBS/.complete"

STACK="${STACK_DIR:-$ROOT/.stack}"
KDIR="$STACK/kafka"
CONF_DIR="$KDIR/config"
DATA_DIR="$KDIR/data"
SERVER_PROPS="$CONF_DIR/server.properties"
LOG4J_PROPS="$CONF_DIR/log4j2.properties"
PIDFILE="$STACK/kafka.pid"
LOG_DIR="$STACK/logs"
LOG="$LOG_DIR/kafka.log"
LOCKFILE="$STACK/kafka.lock"

if [[ -n "${JAVA:-}" ]]; then :
elif [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"
else JAVA=java; fi
PYTHON="${PYTHON:-python3}"

say() { printf '%-11s%s\n' kafka "$*"; }
err() { printf 'ERROR: %s\n' "$*" >&2; }
rel() { printf '%s' "${1#"$ROOT"/}"; }

# --------------------------------------------------------------------------
# Kafka-protocol readiness check.
# ApiVersions (v0, which every broker answers) and then Metadata v4 with no
# topics: "ready" means the broker answers both and lists itself (node 1) among
# the live brokers, i.e. it has caught up with the KRaft metadata log and has
# been unfenced, so topic creation / produce / group joins will work.
# --------------------------------------------------------------------------
read -r -d '' PY_CHECK <<'PYEOF' || true
import socket, struct, sys
host, port, node = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rpc(sock, key, ver, cid, body):
    cl = b"ready-check"
    req = struct.pack(">hhih", key, ver, cid, len(cl)) + cl + body
    sock.sendall(struct.pack(">i", len(req)) + req)
    def rd(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", rd(4))
    data = rd(size)
    (got,) = struct.unpack(">i", data[:4])
    if got != cid:
        raise ValueError("correlation id mismatch")
    return data[4:]
try:
    s = socket.create_connection((host, port), timeout=2)
    s.settimeout(3)
    r = rpc(s, 18, 0, 1, b"")                     # ApiVersions v0
    (ec, n) = struct.unpack(">hi", r[:6])
    if ec not in (0, 35):
        sys.exit(2)
    apis = {}
    for i in range(n):
        k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i: 12 + 6 * i])
        apis[k] = (lo, hi)
    lo, hi = apis.get(3, (0, -1))
    if not (lo <= 4 <= hi):
        sys.exit(3)
    r = rpc(s, 3, 4, 2, struct.pack(">ib", 0, 0))  # Metadata v4, topics=[], no auto-create
    off = 4                                        # throttle_time_ms
    (nb,) = struct.unpack(">i", r[off:off + 4]); off += 4
    ids = []
    for _ in range(nb):
        (nid, hl) = struct.unpack(">ih", r[off:off + 6]); off += 6 + hl
        off += 4                                   # port
        (rl,) = struct.unpack(">h", r[off:off + 2]); off += 2 + max(rl, 0)
        ids.append(nid)
    s.close()
    sys.exit(0 if node in ids else 4)
except SystemExit:
    raise
except Exception:
    sys.exit(1)
PYEOF

answering() {
  if command -v "$PYTHON" >/dev/null 2>&1; then
    "$PYTHON" -c "$PY_CHECK" "$KAFKA_HOST" "$KAFKA_PORT" "$KAFKA_NODE_ID" 2>/dev/null
  else
    # Fallback without Python: raw ApiVersions v0 over bash's /dev/tcp; checks
    # the correlation id (0x2a) and error_code 0 of the answer.
    local hex
    hex="$(timeout 3 bash -c '
      exec 3<>"/dev/tcp/$0/$1" || exit 1
      printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x00" >&3
      head -c 10 <&3 | od -An -tx1' "$KAFKA_HOST" "$KAFKA_PORT" 2>/dev/null | tr -d ' \n')" || return 1
    [[ "${hex:8:12}" == "0000002a0000" ]]
  fi
}

# alive = exists and is not a zombie
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st; st="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null || true)"
  [[ "$st" != Z ]]
}

port_open() { (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null; }

# pid of our broker, or empty. Trusts the pid file only if that process is a
# kafka.Kafka running our server.properties (guards against pid reuse).
broker_pid() {
  local pid=""
  [[ -f "$PIDFILE" ]] && pid="$(tr -dc '0-9' <"$PIDFILE" || true)"
  if [[ -n "$pid" ]] && alive "$pid" \
     && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $SERVER_PROPS"; then
    echo "$pid"; return 0
  fi
  # pid file lost/stale but our broker still runs (matched by its exact config path)
  local re; re="$(printf '%s' "$SERVER_PROPS" | sed 's/[][\.*^$+?(){}|]/\\&/g')"
  pid="$(pgrep -f -x -- ".* kafka\.Kafka $re" 2>/dev/null | head -n1 || true)"
  if [[ -n "$pid" ]]; then echo "$pid" >"$PIDFILE"; echo "$pid"; fi
}

# --------------------------------------------------------------------------
# jars
# --------------------------------------------------------------------------
pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }

ensure_libs() {
  local want; want="$(pom_sum) $KAFKA_VERSION"
  if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$want" ]]; then return 0; fi
  command -v mvn >/dev/null 2>&1 || { err "mvn not found (apt-get install maven) - needed once to fetch the Kafka jars"; exit 1; }
  say "resolving Apache Kafka $KAFKA_VERSION jars from Maven Central into $(rel "$LIBS") (mvn dependency:copy-dependencies) ..."
  local t0=$SECONDS tmp="$CACHE_DIR/libs.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$CACHE_DIR"
  if ! mvn -B -q -f "$POM" dependency:copy-dependencies \
        -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
        -DoutputDirectory="$tmp" >"$CACHE_DIR/mvn.log" 2>&1; then
    rm -rf "$tmp"
    err "mvn could not resolve the Kafka $KAFKA_VERSION jars; log: $CACHE_DIR/mvn.log"
    tail -n 30 "$CACHE_DIR/mvn.log" >&2
    exit 1
  fi
  if ! ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1; then
    rm -rf "$tmp"; err "mvn finished but kafka_2.13 jar is missing in $tmp"; exit 1
  fi
  rm -rf "$LIBS" "$CACHE_DIR/cds"; mv "$tmp" "$LIBS"
  echo "$want" >"$MARKER"
  say "resolved $(ls "$LIBS"/*.jar | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - t0)) s"
}

# --------------------------------------------------------------------------
# config (rewritten on every up, so env changes apply; data is untouched)
# --------------------------------------------------------------------------
write_config() {
  mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR"
  cat >"$SERVER_PROPS.tmp" <<EOF
# generated by scripts/stack/kafka.sh - edits are overwritten on every 'up'
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_NODE_ID@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA_DIR
metadata.log.dir=$DATA_DIR

num.partitions=6
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
delete.topic.enable=true

offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# After an unclean stop (SIGKILL) the restarted node must wait for its previous
# registration's session to expire (DUPLICATE_BROKER_REGISTRATION) before it can
# register again: the default 9 s session makes such a restart ~7 s slower.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# small machine (2 cores): fewer threads than the defaults (3 network, 8 io)
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
background.threads=4
EOF
  mv "$SERVER_PROPS.tmp" "$SERVER_PROPS"

  cat >"$LOG4J_PROPS.tmp" <<'EOF'
# generated by scripts/stack/kafka.sh; the broker's stdout goes to .stack/logs/kafka.log
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.request.additivity = false
logger.request.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.state.additivity = false
logger.state.appenderRef.out.ref = OUT
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.authorizer.additivity = false
logger.authorizer.appenderRef.out.ref = OUT
EOF
  mv "$LOG4J_PROPS.tmp" "$LOG4J_PROPS"
}

# JVM flags. Startup is mostly class loading + JIT on 2 shared cores, so:
#  - C1 only (TieredStopAtLevel=1): ~2x less CPU to start; for this test
#    broker the Python clients are the bottleneck, and in a 100k-message
#    produce/consume run the broker used *less* CPU than with C2 (no C2 compiles).
#  - AppCDS: a dynamic class-data archive of the broker's classes (see cds_opts).
#  - small heap, G1 with Kafka's usual pause settings.
# KAFKA_JVM_OPTS comes last, so e.g. KAFKA_JVM_OPTS=-XX:TieredStopAtLevel=4 re-enables C2.
JVM_OPTS=()
build_jvm_opts() {
  # shellcheck disable=SC2206
  JVM_OPTS=($KAFKA_HEAP_OPTS
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=64m -Xss512k
    -XX:+PerfDisableSharedMem
    -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
    -Dlog4j2.configurationFile="$LOG4J_PROPS" -Dlog4j2.disable.jmx=true
    -Dlog4j2.shutdownHookEnabled=false
    -Dkafka.logs.dir="$LOG_DIR"
    -cp "$LIBS/*")
}

# AppCDS (Java 13+ dynamic archive). The first broker run gets
# -XX:ArchiveClassesAtExit, so its JVM writes the archive when it exits cleanly
# (on 'down'; that one stop takes ~5 s longer). The next 'up' checks the new
# archive with -Xshare:on once and from then on maps it with
# -XX:SharedArchiveFile (~1-2 s faster start). The archive is tied to the JVM
# build and the jars: its name includes a hash of the java binary, it is
# deleted when the jars are re-resolved, and -Xshare:auto (default) silently
# ignores an archive that does not match. KAFKA_CDS=0 disables all of this.
CDS_OPTS=()
cds_opts() {
  CDS_OPTS=()
  [[ "${KAFKA_CDS:-1}" == 0 ]] && return 0
  local jbin jid dir jsa
  jbin="$(readlink -f "$(command -v "$JAVA")")" || return 0
  jid="$(printf '%s %s' "$jbin" "$(stat -c '%s %Y' "$jbin" 2>/dev/null)" | sha256sum | cut -c1-12)"
  dir="$CACHE_DIR/cds"; jsa="$dir/kafka-$jid.jsa"
  mkdir -p "$dir"
  if [[ ! -f "$jsa" && -f "$jsa.new" ]]; then
    # shellcheck disable=SC2086
    if "$JAVA" $KAFKA_HEAP_OPTS -Xshare:on -XX:SharedArchiveFile="$jsa.new" -cp "$LIBS/*" -version >/dev/null 2>&1; then
      mv "$jsa.new" "$jsa"
    else
      rm -f "$jsa.new"
    fi
  fi
  if [[ -f "$jsa" ]]; then
    CDS_OPTS=(-XX:SharedArchiveFile="$jsa")
  else
    rm -f "$dir"/*.jsa.new
    # -Xlog:cds=off: the dump lists every class it skips (~25 lines of noise)
    CDS_OPTS=(-XX:ArchiveClassesAtExit="$jsa.new" -Xlog:cds=off)
  fi
}

format_storage() {
  [[ -f "$DATA_DIR/meta.properties" ]] && return 0
  local cid
  # A URL-safe base64 id may begin with '-', which the tool's argument parser
  # then reads as an option (as Kafka's own random-uuid, draw again).
  cid="-"
  while [[ "$cid" == -* ]]; do
    cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  say "formatting KRaft storage in $(rel "$DATA_DIR") (cluster id $cid)"
  if ! "$JAVA" "${JVM_OPTS[@]}" kafka.tools.StorageTool format \
        -t "$cid" -c "$SERVER_PROPS" --ignore-formatted >>"$LOG" 2>&1; then
    err "formatting the KRaft storage failed; log: $LOG"
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

fail_up() {
  err "kafka did not come up; log: $LOG"
  { echo "---- last 30 lines of $LOG ----"; tail -n 30 "$LOG" 2>/dev/null || true; } >&2
  exit 1
}

ready_msg() { say "ready on $KAFKA_HOST:$KAFKA_PORT (Apache Kafka $KAFKA_VERSION, KRaft)"; }

wait_ready() {
  local pid="$1" deadline=$((SECONDS + KAFKA_UP_TIMEOUT))
  while (( SECONDS < deadline )); do
    if answering; then return 0; fi
    if ! alive "$pid"; then
      err "kafka broker (pid $pid) exited during startup"; rm -f "$PIDFILE"; fail_up
    fi
    sleep 0.3
  done
  err "kafka did not answer within ${KAFKA_UP_TIMEOUT}s (broker pid $pid still running)"
  fail_up
}

lock() {
  mkdir -p "$STACK"
  exec 9>"$LOCKFILE"
  flock -w 120 9 || { err "another kafka.sh is holding $LOCKFILE"; exit 1; }
}

cmd_up() {
  lock
  local pid
  pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then
    answering || wait_ready "$pid"
    ready_msg; return 0
  fi
  rm -f "$PIDFILE"
  # A broker that was just SIGKILLed may still hold its ports for a moment
  # (its /proc entry no longer shows the command line): give it a few seconds.
  local t_end=$((SECONDS + 10))
  while port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT"; do
    if (( SECONDS >= t_end )); then
      err "port $KAFKA_PORT or $KAFKA_CONTROLLER_PORT on $KAFKA_HOST is already in use by another process (not this stack's broker)"
      exit 1
    fi
    sleep 0.2
  done
  command -v "$JAVA" >/dev/null 2>&1 || { err "java not found (need Java 17+)"; exit 1; }

  ensure_libs
  write_config
  build_jvm_opts
  format_storage
  cds_opts

  # keep the appended log bounded: rotate once past ~50 MB
  if [[ -f "$LOG" ]] && (( $(stat -c %s "$LOG") > 50 * 1024 * 1024 )); then mv -f "$LOG" "$LOG.1"; fi
  say "starting broker (log: $(rel "$LOG"))"
  printf '\n===== %s kafka.sh up: starting Apache Kafka %s on %s:%s =====\n' \
    "$(date '+%F %T')" "$KAFKA_VERSION" "$KAFKA_HOST" "$KAFKA_PORT" >>"$LOG"
  # New session (setsid) so the caller's Ctrl-C / process group does not reach
  # it; fd 9 (the lock) closed so the broker does not hold it; the inner shell
  # writes its own pid, which exec turns into the JVM's pid.
  local launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  # shellcheck disable=SC2086
  "${launcher[@]}" bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
      "$JAVA" "${JVM_OPTS[@]}" "${CDS_OPTS[@]}" ${KAFKA_JVM_OPTS:-} kafka.Kafka "$SERVER_PROPS" \
      </dev/null >>"$LOG" 2>&1 9>&- &
  # wait for the pid file written by the child
  local _
  for _ in $(seq 1 50); do [[ -s "$PIDFILE" ]] && break; sleep 0.05; done
  pid="$(tr -dc '0-9' <"$PIDFILE" 2>/dev/null || true)"
  [[ -n "$pid" ]] || { err "could not start the broker"; fail_up; }

  wait_ready "$pid"
  ready_msg
}

cmd_down() {
  lock
  local pid; pid="$(broker_pid)"
  if [[ -z "$pid" ]]; then
    rm -f "$PIDFILE"; say "not running"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  while alive "$pid" && (( SECONDS < deadline )); do sleep 0.2; done
  if alive "$pid"; then
    say "broker (pid $pid) still running after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  say "stopped (data kept in $(rel "$DATA_DIR"))"
}

cmd_status() {
  if answering; then
    say "up on $KAFKA_HOST:$KAFKA_PORT (pid $(broker_pid || true))"; return 0
  fi
  local pid; pid="$(broker_pid)"
  if [[ -n "$pid" ]]; then say "not answering (pid $pid running)"; else say "down"; fi
  return 1
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
