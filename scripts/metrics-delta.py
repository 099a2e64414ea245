#!/usr/bin/env python3
"""Where a Kafki broker's time went between two /metrics snapshots.

    scripts/metrics-delta.py BEFORE_FILE AFTER_FILE [RECORDS]

Prints, summed over shards: per Kafka API the requests handled and their
mean time from arrival to response (kafki_request_latency_seconds), the
log writes (kafki_log_writes_total), and the log fsyncs with their mean latency (kafki_log_fsyncs_total,
kafki_log_fsync_microseconds_total); with RECORDS, records per Produce
request and produce requests per fsync. Used by scripts/produce-perf.sh and
scripts/bench-txn.sh after each measured run.
"""

import re
import sys
from collections import defaultdict

SAMPLE = re.compile(r'^(\w+)\{([^}]*)\} (\S+)$')


def read(path: str) -> dict[tuple[str, str], float]:
    """(metric, api or "") -> value summed over shards."""
    sums: dict[tuple[str, str], float] = defaultdict(float)
    with open(path) as lines:
        for line in lines:
            match = SAMPLE.match(line.strip())
            if not match:
                continue
            name, labels, value = match.groups()
            api = re.search(r'api="([^"]*)"', labels)
            sums[(name, api.group(1) if api else "")] += float(value)
    return sums


def main() -> None:
    before, after = read(sys.argv[1]), read(sys.argv[2])
    records = float(sys.argv[3]) if len(sys.argv) > 3 else None
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    parts = []
    apis = sorted({api for (name, api) in delta if name == "kafki_request_latency_seconds_count"})
    for api in apis:
        count = delta[("kafki_request_latency_seconds_count", api)]
        if count <= 0:
            continue
        seconds = delta.get(("kafki_request_latency_seconds_sum", api), 0.0)
        parts.append(f"{api} {count:.0f}x {1000 * seconds / count:.2f} ms")
    writes = delta.get(("kafki_log_writes_total", ""), 0.0)
    parts.append(f"log writes {writes:.0f}x")
    fsyncs = delta.get(("kafki_log_fsyncs_total", ""), 0.0)
    fsync_us = delta.get(("kafki_log_fsync_microseconds_total", ""), 0.0)
    parts.append(f"fsyncs {fsyncs:.0f}x {fsync_us / 1000 / max(fsyncs, 1):.2f} ms")
    produce = delta.get(("kafki_request_latency_seconds_count", "Produce"), 0.0)
    if records and produce > 0:
        parts.append(f"{records / produce:.1f} records/Produce, "
                     f"{produce / max(fsyncs, 1):.2f} Produce/fsync")
    print("  kafki: " + "; ".join(parts))


if __name__ == "__main__":
    main()
