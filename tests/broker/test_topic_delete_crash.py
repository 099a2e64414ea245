"""Deleting a topic is crash-atomic: once DeleteTopics is answered (or the metadata
without the topic is stored), a kill -9 never brings the topic's records back, and
a new topic of the same name starts empty.

Two ways: the real race (delete, then kill -9 at once, several rounds), and the
crash window made deterministic (the metadata file says the topic is gone while its
folders are still on disk, as after a kill between the two steps).
"""

from __future__ import annotations

import json

import pytest

from kafki_harness import consume_partition, create_topic

pytestmark = pytest.mark.timeout(240)

PARTITIONS = 8


def fill(bootstrap: str, topic: str, per_partition: int = 50):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2})
    for partition in range(PARTITIONS):
        for i in range(per_partition):
            p.produce(topic, value=f"old-{partition}-{i}".encode(), partition=partition)
    assert p.flush(30) == 0


def records_in(bootstrap: str, topic: str) -> int:
    total = 0
    for partition in range(PARTITIONS):
        records, errors = consume_partition(bootstrap, topic, partition, 0, idle_timeout=1.0,
                                            total_timeout=10)
        assert not errors, errors
        total += len(records)
    return total


def test_a_topic_deleted_just_before_a_kill_stays_deleted(broker):
    from confluent_kafka.admin import AdminClient
    for round_ in range(4):
        create_topic(broker.bootstrap, "doomed", partitions=PARTITIONS)
        fill(broker.bootstrap, "doomed")
        adm = AdminClient({"bootstrap.servers": broker.bootstrap})
        adm.delete_topics(["doomed"], operation_timeout=20)["doomed"].result(timeout=30)
        broker.restart_after_kill()
        leftovers = [p.name for p in broker.data_dir.iterdir() if p.name.startswith("doomed-")]
        assert leftovers == [], f"round {round_}: {leftovers}"
        create_topic(broker.bootstrap, "doomed", partitions=PARTITIONS)
        assert records_in(broker.bootstrap, "doomed") == 0, f"round {round_}"
        adm = AdminClient({"bootstrap.servers": broker.bootstrap})
        adm.delete_topics(["doomed"], operation_timeout=20)["doomed"].result(timeout=30)


def test_folders_left_by_a_crash_mid_delete_are_removed_at_start(broker):
    create_topic(broker.bootstrap, "doomed", partitions=PARTITIONS)
    create_topic(broker.bootstrap, "kept")
    fill(broker.bootstrap, "doomed")
    broker.kill9()
    # The crash window: the metadata without the topic is stored, the folders not
    # yet removed.
    path = broker.data_dir / "cluster-metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["topics"]["doomed"]
    metadata["version"] += 1
    path.write_text(json.dumps(metadata))
    assert (broker.data_dir / "doomed-0").exists()
    broker.start()
    assert not any(p.name.startswith("doomed") for p in broker.data_dir.iterdir())
    assert "no topic owns" in broker.log_text()
    assert (broker.data_dir / "kept-0").exists()
    create_topic(broker.bootstrap, "doomed", partitions=PARTITIONS)
    assert records_in(broker.bootstrap, "doomed") == 0
    broker.stop()
