#!/usr/bin/env bash
# Many partitions on one node: creates TOPICS topics of PARTITIONS partitions,
# produces one record to each, and measures what an operator sees (issue 8):
# create time, disk reserved (`du -s` of the data dir), the broker's open
# descriptors and RSS, clean stop time (SIGTERM until exit), restart time after
# a clean stop and after kill -9 (the kill follows a second record to each
# written partition; restart: until every shard logged "accepting Kafka
# connections", which comes after it opened all its partitions, and Metadata
# answers for all topics). Prints a table.
#
#   scripts/many-partitions.sh [TOPICS] [PARTITIONS] [DIR] [extra kafki serve args...]
#
# Defaults: 20 topics of 1000 partitions (20 000) in target/many-partitions.
# PRODUCE_TOPICS=K writes one record to each partition of the first K topics
# only (default: all): a written partition holds its segment files open, and
# the descriptor limit (`ulimit -Hn`) may not allow all of them.
# KAFKI_BIN picks the binary (default target/release/kafki: build it with
# `cargo build --release -p kafki`). The data dir is removed at the start and
# kept at the end (remove it yourself, it is on a real disk).
set -euo pipefail
topics=${1:-20}
partitions=${2:-1000}
dir=${3:-$PWD/target/many-partitions}
shift $(( $# > 3 ? 3 : $# ))
extra=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
kafki=${KAFKI_BIN:-$root/target/release/kafki}
[ -x "$kafki" ] || { echo "build first: cargo build --release -p kafki" >&2; exit 2; }
export NO_COLOR=1
port=${PORT:-19392}
admin_port=${ADMIN_PORT:-19393}
bootstrap=127.0.0.1:$port
rm -rf "$dir"
mkdir -p "$dir/data"
produce_topics=${PRODUCE_TOPICS:-$topics}
pid=
log=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$1" "$2"; }

# Starts the broker, returns when it is ready; sets pid and log.
start() {
  log=$dir/kafki-$1.log
  "$kafki" serve --listen "$bootstrap" --admin-listen "127.0.0.1:$admin_port" \
    --data-dir "$dir/data" "${extra[@]}" >"$log" 2>&1 &
  pid=$!
  local shards=
  while :; do
    kill -0 "$pid" 2>/dev/null || { echo "kafki exited at start:" >&2; tail -20 "$log" >&2; exit 1; }
    if [ -z "$shards" ] && grep -q 'cores=\[' "$log"; then
      shards=$(grep -o 'cores=\[[0-9, ]*\]' "$log" | head -1 | tr -cd ',' | wc -c | awk '{print $1 + 1}')
    fi
    if [ -n "$shards" ] && [ "$(grep -c 'accepting Kafka connections' "$log" || true)" -ge "$shards" ]; then
      break
    fi
    sleep 0.05
  done
  # Metadata for every topic (all partitions with a leader).
  while [ "$("$kafki" topics list -b "$bootstrap" 2>/dev/null | grep -c '^many-' || true)" != "$expect_topics" ]; do
    sleep 0.05
  done
}

# SIGTERM, then wait for the exit.
stop() {
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
  wait "$pid" 2>/dev/null || true
  pid=
}

fds() { ls "/proc/$pid/fd" | wc -l; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
du_mib() { du -sm "$dir/data" | cut -f1; }

expect_topics=0
start first
expect_topics=$topics
t0=$(now)
for t in $(seq "$topics"); do
  "$kafki" topics create -b "$bootstrap" --topic "many-$t" --partitions "$partitions" >/dev/null
done
t1=$(now)
create_s=$(elapsed "$t0" "$t1")
produce_topics=${PRODUCE_TOPICS:-$topics}
produce_failed=0
for t in $(seq "$produce_topics"); do
  seq "$partitions" | "$kafki" produce -b "$bootstrap" --topic "many-$t" --linger-ms 50 \
    >/dev/null 2>>"$dir/produce-errors.log" || produce_failed=$((produce_failed + 1))
done
produce_s=$(elapsed "$t1" "$(now)")
sleep 2
du_written=$(du_mib)
fds_written=$(fds)
rss_written=$(rss_mib)
t0=$(now); stop; stop_s=$(elapsed "$t0" "$(now)")
du_stopped=$(du_mib)
t0=$(now); start clean; restart_s=$(elapsed "$t0" "$(now)")
fds_restarted=$(fds)
rss_restarted=$(rss_mib)
# Write again (one more record to each written partition), so the kill -9
# finds changed logs to recover, not logs left as the clean stop wrote them.
for t in $(seq "$produce_topics"); do
  seq "$partitions" | "$kafki" produce -b "$bootstrap" --topic "many-$t" --linger-ms 50 \
    >/dev/null 2>>"$dir/produce-errors.log" || produce_failed=$((produce_failed + 1))
done
kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=
t0=$(now); start killed; restart_kill_s=$(elapsed "$t0" "$(now)")
t0=$(now); stop; stop2_s=$(elapsed "$t0" "$(now)")

total=$((topics * partitions))
printf '%-44s %s\n' "partitions ($topics topics x $partitions)" "$total"
printf '%-44s %s\n' "create (s)" "$create_s"
printf '%-44s %s\n' "produce one record to each of (partitions)" "$((produce_topics * partitions))"
printf '%-44s %s\n' "produce (s); topics with failed records" "$produce_s; $produce_failed"
printf '%-44s %s\n' "descriptor limit (soft/hard) of the shell" "$(ulimit -Sn)/$(ulimit -Hn)"
printf '%-44s %s\n' "disk used, running, after produce (MiB)" "$du_written"
printf '%-44s %s\n' "disk used after clean stop (MiB)" "$du_stopped"
printf '%-44s %s\n' "broker fds, running, after produce" "$fds_written"
printf '%-44s %s\n' "broker RSS after produce (MiB)" "$rss_written"
printf '%-44s %s\n' "clean stop (s)" "$stop_s"
printf '%-44s %s\n' "restart after clean stop (s)" "$restart_s"
printf '%-44s %s\n' "broker fds after restart" "$fds_restarted"
printf '%-44s %s\n' "broker RSS after restart (MiB)" "$rss_restarted"
printf '%-44s %s\n' "restart after writing and kill -9 (s)" "$restart_kill_s"
printf '%-44s %s\n' "clean stop after that (s)" "$stop2_s"
echo "binary: $kafki; data: $dir; command: $0 $topics $partitions $dir ${extra[*]}"
