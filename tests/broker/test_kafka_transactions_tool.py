"""Kafka's `kafka-transactions.sh` (TransactionsCommand, Kafka 4.1.2) against
Kafki for a transaction that stays open: `describe-producers` (DescribeProducers)
shows its producer and first offset, `find-hanging` (DescribeProducers, then
ListTransactions and DescribeTransactions) reports it only when its coordinator
does not know it writes there, and `abort --start-offset` (DescribeProducers,
then WriteTxnMarkers from the admin client) ends it: the last stable offset moves
past it and a read_committed consumer reads to the end without its records.
"""

from __future__ import annotations

import time
import uuid

import pytest

from kafki_harness import (KAFKA_TOOLS_MISSING, KAFKA_TOOLS_NEEDED, admin_client, connect,
                           create_topic, init_producer_id_v1, parse_produce_v9_response,
                           produce_v9, record_batch, recv_response, transactions_cli,
                           wait_until)

pytestmark = pytest.mark.skipif(KAFKA_TOOLS_MISSING, reason=KAFKA_TOOLS_NEEDED)


def table(output: str) -> list[dict[str, str]]:
    """The rows of a table TransactionsCommand printed, by header."""
    lines = [line.split() for line in output.splitlines() if line.strip()]
    assert lines, f"no table in {output!r}"
    return [dict(zip(lines[0], row)) for row in lines[1:]]


def producers_of(bootstrap: str, topic: str) -> dict[int, dict[str, str]]:
    rows = table(transactions_cli(bootstrap, "describe-producers", "--topic", topic,
                                  "--partition", "0"))
    return {int(row["ProducerId"]): row for row in rows}


def hanging(bootstrap: str, *scope: str) -> list[dict[str, str]]:
    """find-hanging over `scope`, counting any open transaction as old enough."""
    return table(transactions_cli(bootstrap, "find-hanging", *scope,
                                  "--max-transaction-timeout", "0"))


def produce_plain(confluent_kafka, bootstrap: str, topic: str, values: list[bytes]):
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(20) == 0


def stable_offset(confluent_kafka, bootstrap: str, topic: str) -> int:
    """ListOffsets LATEST as a read_committed consumer sees it: the last stable offset."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "lso",
                                         "isolation.level": "read_committed"})
    try:
        _, high = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0),
                                                 timeout=10, cached=False)
        return high
    finally:
        consumer.close()


def read_committed_to_the_end(confluent_kafka, bootstrap: str, topic: str,
                              end_offset: int) -> list[bytes]:
    """Values a read_committed consumer reads from offset 0 until it reports the end of the
    partition at `end_offset` (the log end: nothing is left open)."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
        "isolation.level": "read_committed", "enable.partition.eof": True,
        "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    values = []
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                eof = message.error().code() == confluent_kafka.KafkaError._PARTITION_EOF
                assert eof, message.error()
                if message.offset() >= end_offset:
                    return values
                continue
            values.append(message.value())
        raise AssertionError(f"read_committed never reached offset {end_offset}: read {values}")
    finally:
        consumer.close()


def log_end_offset(confluent_kafka, bootstrap: str, topic: str) -> int:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "hw"})
    try:
        _, high = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0),
                                                 timeout=10, cached=False)
        return high
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_describe_producers_and_abort_an_open_transaction(broker):
    """A producer that never ends its transaction (long transaction.timeout.ms): the
    tool finds its first offset, does not call it hanging while its coordinator still
    holds it, and aborts it; the producer's own abort afterwards is not fenced."""
    import confluent_kafka

    suffix = uuid.uuid4().hex[:8]
    topic, transactional_id = f"stuck-{suffix}", f"tx-{suffix}"
    create_topic(broker.bootstrap, topic)
    produce_plain(confluent_kafka, broker.bootstrap, topic, [b"before-0", b"before-1"])
    producer = confluent_kafka.Producer({
        "bootstrap.servers": broker.bootstrap, "transactional.id": transactional_id,
        "transaction.timeout.ms": 600000})
    producer.init_transactions(30)
    producer.begin_transaction()
    for number in range(3):
        producer.produce(topic, value=f"stuck-{number}".encode(), partition=0)
    assert producer.flush(20) == 0
    # Committed data after the open transaction stays beyond read_committed.
    produce_plain(confluent_kafka, broker.bootstrap, topic, [b"after"])
    assert stable_offset(confluent_kafka, broker.bootstrap, topic) == 2

    described = table(transactions_cli(broker.bootstrap, "describe",
                                       "--transactional-id", transactional_id))
    producer_id = int(described[0]["ProducerId"])
    row = producers_of(broker.bootstrap, topic)[producer_id]
    assert row["CurrentTransactionStartOffset"] == "2", row
    assert row["ProducerEpoch"] == described[0]["ProducerEpoch"], (row, described)
    assert row["LastSequence"] == "2", row
    assert row["LatestCoordinatorEpoch"] == "-1", row
    # Its coordinator lists the partition in the ongoing transaction: not hanging.
    assert hanging(broker.bootstrap, "--topic", topic) == []

    transactions_cli(broker.bootstrap, "abort", "--topic", topic, "--partition", "0",
                     "--start-offset", "2")
    after = producers_of(broker.bootstrap, topic)[producer_id]
    assert after["CurrentTransactionStartOffset"] == "None", after
    end = log_end_offset(confluent_kafka, broker.bootstrap, topic)
    assert stable_offset(confluent_kafka, broker.bootstrap, topic) == end
    values = read_committed_to_the_end(confluent_kafka, broker.bootstrap, topic, end)
    assert values == [b"before-0", b"before-1", b"after"]

    # The coordinator's own ABORT comes after the tool's (coordinator epoch 0): its
    # epoch is the __transaction_state leader epoch, never below it.
    producer.abort_transaction(30)


def hanging_transaction(port: int, topic: str, transactional_id: str) -> tuple[int, int]:
    """A transactional batch written without AddPartitionsToTxn (what KIP-890
    verification refuses when on): its coordinator never learns the partition, so no marker will ever end
    it there. Returns (producer id, offset)."""
    producer_id, epoch = init_producer_id_v1(port, transactional_id)
    batch = record_batch([(None, b"hanging")], producer_id=producer_id, producer_epoch=epoch,
                         base_sequence=0, transactional=True)
    sock = connect(port)
    try:
        sock.sendall(produce_v9(11, topic, 0, batch, transactional_id=transactional_id))
        answer = parse_produce_v9_response(recv_response(sock))
    finally:
        sock.close()
    assert answer["error_code"] == 0, answer
    return producer_id, answer["base_offset"]


@pytest.mark.timeout(240)
def test_find_hanging_reports_a_transaction_its_coordinator_does_not_know(broker_factory):
    """A transactional batch its coordinator never heard of reaches a
    partition only with KIP-890 verification off (as on brokers before it,
    or with `transaction.partition.verification.enable=false`, set here):
    that is the hanging transaction `find-hanging` exists for."""
    import confluent_kafka

    broker = broker_factory(settings={"transaction.partition.verification.enable": "false"})

    suffix = uuid.uuid4().hex[:8]
    topic = f"hang-{suffix}"
    create_topic(broker.bootstrap, topic)
    produce_plain(confluent_kafka, broker.bootstrap, topic, [b"before"])
    producer_id, start = hanging_transaction(broker.port, topic, f"tx-{suffix}")
    assert start == 1
    produce_plain(confluent_kafka, broker.bootstrap, topic, [b"after"])
    broker_ids = list(admin_client(broker.bootstrap).list_topics(timeout=10).brokers)
    assert len(broker_ids) == 1, broker_ids
    # The tool counts a transaction as old when it began more than 0 ms ago.
    time.sleep(0.1)

    for scope in (["--broker-id", str(broker_ids[0])], ["--topic", topic, "--partition", "0"]):
        rows = [row for row in hanging(broker.bootstrap, *scope) if row["Topic"] == topic]
        assert [(int(row["ProducerId"]), int(row["StartOffset"])) for row in rows] == \
            [(producer_id, start)], (scope, rows)

    transactions_cli(broker.bootstrap, "abort", "--topic", topic, "--partition", "0",
                     "--start-offset", str(start))
    wait_until(lambda: hanging(broker.bootstrap, "--topic", topic) == [], 20, 0.5,
               "find-hanging empty after the abort")
    end = log_end_offset(confluent_kafka, broker.bootstrap, topic)
    values = read_committed_to_the_end(confluent_kafka, broker.bootstrap, topic, end)
    assert values == [b"before", b"after"]
