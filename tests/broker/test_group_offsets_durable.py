"""Committed consumer-group offsets live in __consumer_offsets and survive a
broker restart (clean stop) and a kill -9, with their metadata."""

from __future__ import annotations

import uuid

import pytest


def consume(confluent_kafka, bootstrap, topic, group, count):
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": group,
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
    })
    consumer.subscribe([topic])
    values = []
    for _ in range(400):
        message = consumer.poll(0.1)
        if message is not None and message.error() is None:
            values.append(message.value())
        if len(values) >= count:
            break
    return consumer, values


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_committed_offsets_survive_restart(broker, how):
    import confluent_kafka

    topic = f"durable-{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for index in range(20):
        producer.produce(topic, value=f"m{index}".encode())
    assert producer.flush(20) == 0

    consumer, values = consume(confluent_kafka, broker.bootstrap, topic, group, 8)
    assert values[:8] == [f"m{index}".encode() for index in range(8)]
    committed = [confluent_kafka.TopicPartition(topic, 0, 8, metadata="checkpoint-8")]
    consumer.commit(offsets=committed, asynchronous=False)
    consumer.close()

    if how == "sigterm":
        broker.stop()
        broker.start()
    else:
        broker.restart_after_kill()

    consumer, values = consume(confluent_kafka, broker.bootstrap, topic, group, 12)
    assert values == [f"m{index}".encode() for index in range(8, 20)], values
    stored = consumer.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=10)
    assert stored[0].offset == 8
    assert stored[0].metadata == "checkpoint-8"
    consumer.close()
