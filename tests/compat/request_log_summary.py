#!/usr/bin/env python3
"""Summarise which API versions each client sent, from a Kafka request log.

    KAFKA_REQUEST_LOG=1 scripts/peers.sh start kafka 19092
    KAFKI_BOOTSTRAP=127.0.0.1:19092 .venv-compat/bin/pytest tests/compat -q
    python3 tests/compat/request_log_summary.py /tmp/kafki-peers/kafka-19092/request.log

Clients are told apart by the software name/version of the ApiVersions request on each
connection (KIP-511; clients that send ApiVersions v0-2 carry none: their client id is used).
"""

from __future__ import annotations

import collections
import json
import re
import sys


def main(path: str) -> None:
    conn_client: dict[str, str] = {}
    per_client: dict[str, dict[str, set[int]]] = collections.defaultdict(
        lambda: collections.defaultdict(set))
    errors: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    pending: list[tuple[str, str, str, int]] = []
    for line in open(path, encoding="utf-8", errors="replace"):
        if not line.startswith("Completed request:"):
            continue
        try:
            d = json.loads(line[len("Completed request:"):])
        except json.JSONDecodeError:
            continue
        if d.get("listener") not in (None, "PLAINTEXT"):
            continue
        h = d["requestHeader"]
        conn = d.get("connection", "")
        cid = re.sub(r"[-_.]?\d+$", "", h.get("clientId") or "")
        cid = re.sub(r"compat-.*", "compat-*", cid)
        name = h["requestApiKeyName"]
        if name == "API_VERSIONS":
            r = d.get("request") or {}
            sw = r.get("clientSoftwareName")
            label = f"{sw} {r.get('clientSoftwareVersion')}" if sw else f"client.id={cid!r} (ApiVersions v{h['requestApiVersion']})"
            conn_client[conn] = label
        pending.append((conn, cid, name, h["requestApiVersion"]))
        resp = d.get("response") or {}
        code = resp.get("errorCode")
        if code:
            errors[conn].update([f"{name}:{code}"])
    for conn, cid, name, ver in pending:
        per_client[conn_client.get(conn, f"client.id={cid!r}")][name].add(ver)
    for client in sorted(per_client):
        apis = per_client[client]
        print(f"- **{client}**: " + ", ".join(
            f"{k} v{'/'.join(map(str, sorted(v)))}" for k, v in sorted(apis.items())))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kafki-peers/kafka-19092/request.log")
