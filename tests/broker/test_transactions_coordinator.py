"""The transaction coordinator through librdkafka (confluent-kafka):
init_transactions, an empty transaction committed and aborted, offsets sent
to a transaction (TxnOffsetCommit) invisible to the group until the COMMIT
marker and never visible after an abort, and a second producer with the same
transactional.id fencing the first.

Markers are written by the partition side (`crate::txn::markers`), which
completes the transactional offsets on the `__consumer_offsets` partition.
"""

from __future__ import annotations

import uuid

import pytest

from kafki_harness import (KAFKA_TOOLS_MISSING, KAFKA_TOOLS_NEEDED, init_producer_id_v1,
                           transactions_cli)

# OFFSET_INVALID: librdkafka's "no committed offset".
NO_OFFSET = -1001


def transactional_producer(confluent_kafka, bootstrap, transactional_id):
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": transactional_id,
        "transaction.timeout.ms": 60000,
    })
    producer.init_transactions(30)
    return producer


def group_consumer(confluent_kafka, bootstrap, group, isolation="read_uncommitted"):
    # read_uncommitted: OffsetFetch without require_stable, so a pending
    # transactional offset shows as "none" instead of being retried.
    return confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": group,
        "enable.auto.commit": False, "isolation.level": isolation,
    })


def make_topic(confluent_kafka, bootstrap, topic):
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value=b"seed")
    assert producer.flush(20) == 0


def send_offsets(producer, consumer, topic, offset):
    import confluent_kafka
    producer.begin_transaction()
    producer.send_offsets_to_transaction(
        [confluent_kafka.TopicPartition(topic, 0, offset)],
        consumer.consumer_group_metadata(), 30)


def committed_offset(consumer, topic):
    import confluent_kafka
    return consumer.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=10)[0].offset


@pytest.mark.timeout(60)
def test_init_and_an_empty_transaction(broker):
    import confluent_kafka

    producer = transactional_producer(confluent_kafka, broker.bootstrap, f"tx-{uuid.uuid4().hex[:8]}")
    producer.begin_transaction()
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.abort_transaction(30)


@pytest.mark.timeout(90)
def test_sent_offsets_stay_invisible_until_the_commit_marker(broker):
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group = f"data-{suffix}", f"g-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    producer = transactional_producer(confluent_kafka, broker.bootstrap, f"tx-{suffix}")
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    send_offsets(producer, consumer, topic, 5)
    # Stored in __consumer_offsets but pending: not the group's offset.
    assert committed_offset(consumer, topic) == NO_OFFSET
    # A read_committed client asks with require_stable: UNSTABLE_OFFSET_COMMIT,
    # which librdkafka retries until its timeout.
    stable = group_consumer(confluent_kafka, broker.bootstrap, group, "read_committed")
    with pytest.raises(confluent_kafka.KafkaException):
        stable.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=3)
    stable.close()
    # EndTxn is answered once PrepareCommit is durable.
    producer.commit_transaction(30)
    consumer.close()


@pytest.mark.timeout(90)
def test_aborted_offsets_are_never_visible(broker):
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group = f"data-{suffix}", f"g-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    producer = transactional_producer(confluent_kafka, broker.bootstrap, f"tx-{suffix}")
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    send_offsets(producer, consumer, topic, 7)
    producer.abort_transaction(30)
    assert committed_offset(consumer, topic) == NO_OFFSET
    consumer.close()


@pytest.mark.timeout(90)
def test_a_second_producer_fences_the_first(broker):
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group = f"data-{suffix}", f"g-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    transactional_id = f"tx-{suffix}"
    first = transactional_producer(confluent_kafka, broker.bootstrap, transactional_id)
    second = transactional_producer(confluent_kafka, broker.bootstrap, transactional_id)
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    with pytest.raises(confluent_kafka.KafkaException) as raised:
        send_offsets(first, consumer, topic, 3)
    error = raised.value.args[0]
    assert error.fatal() or error.code() in (
        confluent_kafka.KafkaError._FENCED, confluent_kafka.KafkaError.PRODUCER_FENCED,
        confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH), error
    # The new producer carries on.
    send_offsets(second, consumer, topic, 3)
    second.abort_transaction(30)
    consumer.close()


@pytest.mark.timeout(120)
def test_pending_offsets_stay_pending_across_a_kill(broker):
    """The replay of __consumer_offsets honours transactions: offsets of a
    transactional batch with no marker after it come back pending (still
    invisible, still UNSTABLE_OFFSET_COMMIT), not committed."""
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group = f"data-{suffix}", f"g-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    producer = transactional_producer(confluent_kafka, broker.bootstrap, f"tx-{suffix}")
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    send_offsets(producer, consumer, topic, 5)
    consumer.close()
    broker.restart_after_kill()
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    assert committed_offset(consumer, topic) == NO_OFFSET
    consumer.close()
    stable = group_consumer(confluent_kafka, broker.bootstrap, group, "read_committed")
    with pytest.raises(confluent_kafka.KafkaException):
        stable.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=3)
    stable.close()


@pytest.mark.skipif(KAFKA_TOOLS_MISSING, reason=KAFKA_TOOLS_NEEDED)
@pytest.mark.timeout(120)
def test_kafka_transactions_cli_lists_and_describes(broker):
    """ListTransactions and DescribeTransactions as `kafka-transactions.sh` uses them."""
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group, transactional_id = f"data-{suffix}", f"g-{suffix}", f"tx-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    producer = transactional_producer(confluent_kafka, broker.bootstrap, transactional_id)
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group)
    send_offsets(producer, consumer, topic, 3)
    listed = transactions_cli(broker.bootstrap, "list")
    row = next(line.split() for line in listed.splitlines() if line.startswith(transactional_id))
    assert row[-1] == "Ongoing", listed
    described = transactions_cli(broker.bootstrap, "describe", "--transactional-id", transactional_id)
    assert "Ongoing" in described and "__consumer_offsets-" in described, described
    producer.abort_transaction(30)
    consumer.close()


@pytest.mark.timeout(120)
def test_producer_epochs_survive_a_kill(broker):
    """Each InitProducerId bumps the epoch, recorded in __transaction_state:
    after kill -9 the coordinator replays it and bumps on from there."""
    transactional_id = f"tx-{uuid.uuid4().hex[:8]}"
    producer_id, epoch = init_producer_id_v1(broker.port, transactional_id)
    assert epoch == 0
    assert init_producer_id_v1(broker.port, transactional_id) == (producer_id, 1)
    broker.restart_after_kill()
    assert init_producer_id_v1(broker.port, transactional_id) == (producer_id, 2)


@pytest.mark.timeout(90)
def test_committed_offsets_become_visible_and_aborted_ones_do_not(broker):
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, group = f"data-{suffix}", f"g-{suffix}"
    make_topic(confluent_kafka, broker.bootstrap, topic)
    producer = transactional_producer(confluent_kafka, broker.bootstrap, f"tx-{suffix}")
    consumer = group_consumer(confluent_kafka, broker.bootstrap, group, "read_committed")
    send_offsets(producer, consumer, topic, 5)
    producer.commit_transaction(30)
    assert committed_offset(consumer, topic) == 5
    # The next transaction's offsets are dropped by its abort.
    send_offsets(producer, consumer, topic, 9)
    producer.abort_transaction(30)
    assert committed_offset(consumer, topic) == 5
    # And transactional data: committed records visible to read_committed.
    producer.begin_transaction()
    producer.produce(topic, value=b"in-txn")
    producer.commit_transaction(30)
    reader = confluent_kafka.Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": f"r-{suffix}",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
    })
    reader.subscribe([topic])
    values = []
    for _ in range(200):
        message = reader.poll(0.1)
        if message is not None and message.error() is None:
            values.append(message.value())
        if b"in-txn" in values:
            break
    assert values == [b"seed", b"in-txn"], values
    reader.close()
    consumer.close()
