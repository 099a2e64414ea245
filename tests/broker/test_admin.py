"""The admin HTTP listener of a running broker: /health, /metrics, /v1/layout.

Proves that the metrics named in the docs exist and move with real traffic
(a confluent-kafka produce and consume), that fetched bytes are counted per
path, and that the layout reports every shard with its CPU and partitions.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest


def get(broker, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}{path}", timeout=5) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def metric(body: str, name: str, **labels) -> float:
    total = 0.0
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(60)
def test_health_metrics_and_layout_follow_traffic(broker):
    import confluent_kafka
    status, _, body = get(broker, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"

    topic = f"admin-{uuid.uuid4().hex[:8]}"
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for index in range(100):
        producer.produce(topic, value=b"x" * 1000, key=str(index).encode())
    assert producer.flush(20) == 0
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"g-{topic}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    received = 0
    for _ in range(200):
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            received += 1
        if received == 100:
            break
    consumer.close()
    assert received == 100

    status, content_type, body = get(broker, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert metric(body, "kafki_requests_total", api="Produce") >= 1
    assert metric(body, "kafki_requests_total", api="Fetch") >= 1
    assert metric(body, "kafki_bytes_in_total") >= 100 * 1000
    fetched = sum(metric(body, "kafki_fetch_bytes_total", path=path) for path in ("sendfile", "memory", "copy"))
    assert fetched >= 100 * 1000, f"fetched bytes not counted: {fetched}"
    assert re.search(r'^kafki_request_latency_seconds_bucket\{.*api="Produce"', body, re.M)
    assert metric(body, "kafki_partitions") >= 1

    status, _, body = get(broker, "/v1/layout")
    layout = json.loads(body)
    assert status == 200 and len(layout["shards"]) >= 1
    owned = [p for shard in layout["shards"] for p in shard["partitions"]]
    assert f"{topic}-0" in owned
    assert all(isinstance(shard["cpu"], int) for shard in layout["shards"])
