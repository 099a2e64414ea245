#!/usr/bin/env bash
# Storage benchmark beside the raw device: runs fio's sequential O_DIRECT
# write and `kafki bench storage --sync none` alternately on the same
# directory, RUNS times each, and prints the medians and their ratio.
#
#   scripts/bench-storage.sh [DIR] [TOTAL_BYTES] [RUNS] [extra kafki args...]
#
# DIR must be on the disk you want to measure (not tmpfs). Needs fio
# (apt-get install fio) and a release build (cargo build --release).
set -euo pipefail
dir=${1:-$PWD/target/bench-storage}
total=${2:-2147483648}
runs=${3:-5}
shift $(( $# > 3 ? 3 : $# ))
extra=("$@")
root=$(cd "$(dirname "$0")/.." && pwd)
kafki=${KAFKI_BIN:-$root/target/release/kafki}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 2; }
[ -x "$kafki" ] || { echo "build first: cargo build --release -p kafki" >&2; exit 2; }
mkdir -p "$dir"
fio_cmd=(fio --name=seqwrite --directory="$dir" --direct=1 --rw=write --bs=1M --iodepth=32
         --ioengine=io_uring --size="$total" --output-format=json)
kafki_cmd=("$kafki" bench storage --dir "$dir" --total-bytes "$total" --batch-bytes 1048576 --sync none "${extra[@]}")
fio_results=() kafki_results=()
for run in $(seq "$runs"); do
  rm -f "$dir"/seqwrite*
  fio_mib=$("${fio_cmd[@]}" 2>/dev/null | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["bw"]/1024, 1))')
  rm -f "$dir"/seqwrite*
  line=$("${kafki_cmd[@]}" 2>/dev/null)
  kafki_mib=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["mib_per_s"], 1))' "$line")
  echo "run $run: fio ${fio_mib} MiB/s, kafki ${kafki_mib} MiB/s   $line" >&2
  fio_results+=("$fio_mib") kafki_results+=("$kafki_mib")
done
python3 - "${fio_results[*]}" "${kafki_results[*]}" <<'PY'
import statistics, sys
fio = [float(x) for x in sys.argv[1].split()]
kafki = [float(x) for x in sys.argv[2].split()]
f, k = statistics.median(fio), statistics.median(kafki)
print(f"fio median {f:.1f} MiB/s  kafki median {k:.1f} MiB/s  ratio {k / f:.2f}")
PY
echo "fio:   ${fio_cmd[*]}"
echo "kafki: ${kafki_cmd[*]}"
