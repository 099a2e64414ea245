#!/usr/bin/env bash
# A local kafki cluster to try by hand (the tests use tests/cluster/cluster_harness.py).
#
#   scripts/cluster.sh start N [--dir D] [-- EXTRA SERVE ARGS]   nodes 1..N (N <= 5)
#   scripts/cluster.sh status      [--dir D]   pid alive? + GET /v1/cluster of each node
#   scripts/cluster.sh stop        [--dir D]   SIGTERM every node, wait for each
#   scripts/cluster.sh stop-node I [--dir D]   SIGTERM node I, wait
#   scripts/cluster.sh kill I      [--dir D]   kill -9 node I
#   scripts/cluster.sh restart I   [--dir D]   stop node I if running, start it again
#   scripts/cluster.sh logs I [-f] [--dir D]   last 100 lines of node I's log (-f: follow)
#
# Node i: Kafka 127.0.0.1:(i*10000+9092), cluster 127.0.0.1:(i*10000+9093),
# admin 127.0.0.1:(i*10000+9644); data D/n<i>, log D/n<i>.log (appended across
# starts), pid D/n<i>.pid; D defaults to target/cluster. `start` records N and
# the extra args in D/cluster.conf for restart. Binary: $KAFKI_BIN, else
# target/release/kafki if present, else target/debug/kafki. Node i runs on
# CPU (i-1) modulo the CPUs (`--cores`), or on the i-th CPU of $NODE_CPUS
# (e.g. NODE_CPUS="1 2 3": the process pinned there too), unless the extra
# args say `--cores`.
#
# Example:
#   cargo build -p kafki && scripts/cluster.sh start 3 && scripts/cluster.sh status
#   kcat -b 127.0.0.1:19092,127.0.0.1:29092 -L
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/target/cluster"
MAX_NODES=5
STOP_WAIT_S=30
START_WAIT_S=20

say() { printf '[cluster] %s\n' "$*"; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

kafka_port() { echo $(($1 * 10000 + 9092)); }
cluster_port() { echo $(($1 * 10000 + 9093)); }
admin_port() { echo $(($1 * 10000 + 9644)); }
pid_file() { echo "$DIR/n$1.pid"; }
log_file() { echo "$DIR/n$1.log"; }

kafki_bin() {
  if [ -n "${KAFKI_BIN:-}" ]; then
    echo "$KAFKI_BIN"
  elif [ -x "$ROOT/target/release/kafki" ]; then
    echo "$ROOT/target/release/kafki"
  else
    echo "$ROOT/target/debug/kafki"
  fi
}

# The pid of node I if its process is alive and is kafki (not a reused pid), else nothing.
node_pid() {
  local f pid
  f="$(pid_file "$1")"
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q kafki; then
    echo "$pid"
  fi
}

# Node ids with a pid file or a data dir in $DIR, in order.
known_nodes() {
  local i
  for i in $(seq 1 "$MAX_NODES"); do
    if [ -f "$(pid_file "$i")" ] || [ -d "$DIR/n$i" ]; then echo "$i"; fi
  done
}

read_conf() { # sets N and EXTRA (array) from $DIR/cluster.conf
  [ -f "$DIR/cluster.conf" ] || die "no cluster in $DIR (run: $0 start N --dir $DIR)"
  # shellcheck source=/dev/null
  . "$DIR/cluster.conf"
}

voters() {
  local n="$1" i out=""
  for i in $(seq 1 "$n"); do
    out="$out${out:+,}$i@127.0.0.1:$(cluster_port "$i")"
  done
  echo "$out"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() { # start_node I N
  local i="$1" n="$2" bin pid
  bin="$(kafki_bin)"
  [ -x "$bin" ] || die "$bin missing: run \`cargo build -p kafki\` (or set KAFKI_BIN)"
  pid="$(node_pid "$i")"
  if [ -n "$pid" ]; then
    say "node $i already running (pid $pid)"
    return 0
  fi
  for port in "$(kafka_port "$i")" "$(cluster_port "$i")" "$(admin_port "$i")"; do
    if port_open "$port"; then die "node $i: port $port is already in use"; fi
  done
  mkdir -p "$DIR/n$i"
  local cmd=("$bin" serve --node-id "$i"
    --listen "127.0.0.1:$(kafka_port "$i")"
    --cluster-listen "127.0.0.1:$(cluster_port "$i")"
    --admin-listen "127.0.0.1:$(admin_port "$i")"
    --voters "$(voters "$n")"
    --data-dir "$DIR/n$i"
    --set group.initial.rebalance.delay.ms=0)
  # One CPU per node, (i-1) modulo the CPUs or the i-th of NODE_CPUS,
  # unless the extra args choose.
  case " ${EXTRA[*]-} " in
    *" --cores "*|*" --cores="*) ;;
    *)
      local cpus cpu
      read -r -a cpus <<<"${NODE_CPUS:-}"
      if [ "${#cpus[@]}" -gt 0 ]; then
        cpu="${cpus[$(( (i - 1) % ${#cpus[@]} ))]}"
        cmd=(taskset -c "$cpu" "${cmd[@]}" --cores "$cpu")
      else
        cmd+=(--cores "$(( (i - 1) % $(nproc) ))")
      fi
      ;;
  esac
  cmd+=(${EXTRA[@]+"${EXTRA[@]}"})
  say "node $i: ${cmd[*]}"
  printf '\n=== cluster.sh: start node %s at %s ===\n' "$i" "$(date '+%F %T')" >>"$(log_file "$i")"
  NO_COLOR=1 nohup "${cmd[@]}" >>"$(log_file "$i")" 2>&1 </dev/null &
  echo $! >"$(pid_file "$i")"
  say "node $i: pid $!, log $(log_file "$i")"
}

wait_listening() { # wait_listening I...
  local i deadline
  deadline=$((SECONDS + START_WAIT_S))
  for i in "$@"; do
    until port_open "$(kafka_port "$i")" && port_open "$(admin_port "$i")"; do
      if [ -z "$(node_pid "$i")" ]; then
        say "node $i exited; last lines of $(log_file "$i"):"
        tail -n 20 "$(log_file "$i")" >&2
        return 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "node $i not listening after ${START_WAIT_S}s (see: $0 logs $i)"
        return 1
      fi
      sleep 0.2
    done
    say "node $i listening: kafka 127.0.0.1:$(kafka_port "$i") admin 127.0.0.1:$(admin_port "$i")"
  done
}

stop_nodes() { # stop_nodes I...: SIGTERM all of them, then wait for each
  local i pid waiting=()
  for i in "$@"; do
    pid="$(node_pid "$i")"
    if [ -z "$pid" ]; then
      say "node $i not running"
      rm -f "$(pid_file "$i")"
      continue
    fi
    say "node $i: SIGTERM pid $pid"
    kill -CONT "$pid" 2>/dev/null || true   # in case it was paused
    kill -TERM "$pid"
    waiting+=("$i")
  done
  local deadline=$((SECONDS + STOP_WAIT_S)) rc=0
  for i in ${waiting[@]+"${waiting[@]}"}; do
    while [ -n "$(node_pid "$i")" ]; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        say "node $i still running after ${STOP_WAIT_S}s; force it with: $0 kill $i"
        rc=1
        continue 2
      fi
      sleep 0.2
    done
    rm -f "$(pid_file "$i")"
    if tail -n 50 "$(log_file "$i")" | grep -q "kafki stopped cleanly"; then
      say "node $i stopped cleanly"
    else
      say "node $i stopped, without the clean-stop line (see: $0 logs $i)"
    fi
  done
  return "$rc"
}

fetch() { # fetch URL: body on stdout, nothing if no answer
  if command -v curl >/dev/null 2>&1; then
    curl -s --noproxy '*' --max-time 2 "$1" || true
  else
    python3 - "$1" <<'PY' || true
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open(sys.argv[1], timeout=2).read().decode())
except Exception:
    pass
PY
  fi
}

summarize() { # JSON of /v1/cluster on stdin -> one or two lines
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
text = sys.stdin.read()
try:
    v = json.loads(text)
except ValueError:
    print("    (not JSON) " + text[:200].replace("\n", " ")); sys.exit()
q = v.get("quorum") or {}
print("    controller=%s role=%s leader=%s term=%s commit=%s applied=%s metadata_offset=%s voters=%s"
      % (v.get("controller_id"), q.get("role"), q.get("leader_id"), q.get("term"),
         q.get("commit_index"), q.get("applied_index"), v.get("metadata_offset"), q.get("voters")))
print("    nodes: " + ", ".join("%s:%s(epoch %s)" % (n.get("id"), n.get("state"), n.get("epoch"))
                                for n in v.get("nodes") or []))'
  else
    sed 's/^/    /'
  fi
}

cmd_status() {
  local i pid body nodes
  nodes="$(known_nodes)"
  [ -n "$nodes" ] || { say "no nodes in $DIR"; return 0; }
  for i in $nodes; do
    pid="$(node_pid "$i")"
    if [ -z "$pid" ]; then
      echo "node $i: down"
      continue
    fi
    echo "node $i: pid $pid, kafka 127.0.0.1:$(kafka_port "$i"), admin 127.0.0.1:$(admin_port "$i")"
    body="$(fetch "http://127.0.0.1:$(admin_port "$i")/v1/cluster")"
    if [ -n "$body" ]; then
      printf '%s\n' "$body" | summarize
    else
      echo "    /v1/cluster: no answer"
    fi
  done
}

node_arg() { # validate a node id
  if ! [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || [ "$1" -gt "$MAX_NODES" ]; then
    die "node id 1..$MAX_NODES expected, got '${1:-}'"
  fi
}

# ------------------------------------------------------------------ arguments
[ $# -ge 1 ] || { usage; exit 2; }
action="$1"
shift
args=()
EXTRA=()
follow=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    -f) follow=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
# An absolute path (only `start` creates the directory).
if [ "$action" = start ]; then mkdir -p "$DIR"; fi
if [ -d "$DIR" ]; then DIR="$(cd "$DIR" && pwd)"; fi

case "$action" in
  start)
    [ ${#args[@]} -eq 1 ] || die "usage: $0 start N [--dir D] [-- EXTRA SERVE ARGS]"
    node_arg "${args[0]}"
    N="${args[0]}"
    if [ -f "$DIR/cluster.conf" ]; then
      old_n="$(sed -n 's/^N=//p' "$DIR/cluster.conf")"
      running=""
      for i in $(known_nodes); do [ -z "$(node_pid "$i")" ] || running="$running $i"; done
      if [ -n "$running" ] && [ "$old_n" != "$N" ]; then
        die "a $old_n-node cluster is running in $DIR (nodes$running); stop it first"
      fi
    fi
    {
      printf 'N=%q\n' "$N"
      printf 'EXTRA=('
      for a in ${EXTRA[@]+"${EXTRA[@]}"}; do printf '%q ' "$a"; done
      printf ')\n'
    } >"$DIR/cluster.conf"
    say "starting $N nodes in $DIR with $(kafki_bin)"
    for i in $(seq 1 "$N"); do start_node "$i" "$N"; done
    mapfile -t started < <(seq 1 "$N")
    wait_listening "${started[@]}"
    bootstrap=""
    for i in $(seq 1 "$N"); do bootstrap="$bootstrap${bootstrap:+,}127.0.0.1:$(kafka_port "$i")"; done
    say "bootstrap: $bootstrap"
    dir_arg=""
    [ "$DIR" = "$ROOT/target/cluster" ] || dir_arg=" --dir $DIR"
    say "next: $0 status$dir_arg"
    ;;
  stop)
    nodes="$(known_nodes)"
    [ -n "$nodes" ] || { say "no nodes in $DIR"; exit 0; }
    # shellcheck disable=SC2086 # one id per word
    stop_nodes $nodes
    ;;
  stop-node)
    [ ${#args[@]} -eq 1 ] || die "usage: $0 stop-node I"
    node_arg "${args[0]}"
    stop_nodes "${args[0]}"
    ;;
  kill)
    [ ${#args[@]} -eq 1 ] || die "usage: $0 kill I"
    node_arg "${args[0]}"
    pid="$(node_pid "${args[0]}")"
    [ -n "$pid" ] || die "node ${args[0]} not running"
    say "node ${args[0]}: kill -9 $pid"
    kill -KILL "$pid"
    rm -f "$(pid_file "${args[0]}")"
    ;;
  restart)
    [ ${#args[@]} -eq 1 ] || die "usage: $0 restart I"
    node_arg "${args[0]}"
    read_conf
    [ "${args[0]}" -le "$N" ] || die "the cluster in $DIR has $N nodes"
    stop_nodes "${args[0]}"
    start_node "${args[0]}" "$N"
    wait_listening "${args[0]}"
    ;;
  status)
    cmd_status
    ;;
  logs)
    [ ${#args[@]} -eq 1 ] || die "usage: $0 logs I [-f]"
    node_arg "${args[0]}"
    log="$(log_file "${args[0]}")"
    [ -f "$log" ] || die "no log $log"
    if [ "$follow" = 1 ]; then tail -n 100 -f "$log"; else tail -n 100 "$log"; fi
    ;;
  *)
    usage
    exit 2
    ;;
esac
