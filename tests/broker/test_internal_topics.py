"""`__consumer_offsets` belongs to the group coordinator: a client may not produce
to it, delete its records or delete it (Kafka refuses the first two with
INVALID_TOPIC_EXCEPTION; deleting it would lose every group's offsets). The
group's committed offset is intact after all three attempts, and across a restart.
"""

from __future__ import annotations

import pytest

from kafki_harness import create_topic

pytestmark = pytest.mark.timeout(120)

INTERNAL = "__consumer_offsets"


def test_clients_cannot_write_delete_records_of_or_delete_the_offsets_topic(broker):
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    create_topic(broker.bootstrap, "t")
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g",
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition("t", 0, 7)], asynchronous=False)
    c.close()

    # Produce: refused, not appended.
    errors = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                  "message.timeout.ms": 10000})
    for partition in range(3):
        p.produce(INTERNAL, key=b"forged", value=b"forged", partition=partition,
                  on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(20) == 0
    assert len(errors) == 3
    assert all(err is not None and err.code() == KafkaError.TOPIC_EXCEPTION for err in errors), errors

    adm = AdminClient({"bootstrap.servers": broker.bootstrap})
    # DeleteRecords: refused.
    done = adm.delete_records([TopicPartition(INTERNAL, partition, -1) for partition in range(3)],
                              request_timeout=20)
    for future in done.values():
        with pytest.raises(Exception) as refused:
            future.result(timeout=20)
        assert "TOPIC_EXCEPTION" in str(refused.value) or "internal" in str(refused.value).lower()
    # DeleteTopics: refused.
    with pytest.raises(Exception) as refused:
        adm.delete_topics([INTERNAL], operation_timeout=20)[INTERNAL].result(timeout=30)
    assert "TOPIC_EXCEPTION" in str(refused.value), refused.value
    assert INTERNAL in adm.list_topics(timeout=10).topics

    def committed():
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "g",
                      "enable.auto.commit": False})
        try:
            return c.committed([TopicPartition("t", 0)], timeout=10)[0].offset
        finally:
            c.close()

    assert committed() == 7
    broker.stop()
    broker.start()
    assert committed() == 7
