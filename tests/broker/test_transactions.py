"""Kafka transactions end to end on one `kafki serve`, with confluent-kafka
(librdkafka) as the application: what a transactional producer and a
read_committed consumer rely on.

- commit and abort across three partitions: read_committed sees exactly the
  committed transactions' records, read_uncommitted sees everything, and
  the control batches take offsets (a gap a read_committed reader skips);
- consume-transform-produce with `send_offsets_to_transaction`: the group's
  committed offsets appear only when the transaction commits and never for
  an aborted one; a plain commit made while a transaction was open is not
  undone by its commit (Kafka's rule), also after a restart;
- zombie fencing: a second producer with the same `transactional.id` fences
  the first, whose next transactional call fails fatally;
- a hung transaction (its producer stops without ending it) is aborted by
  the coordinator once `transaction.timeout.ms` has passed: the last stable
  offset moves past it and read_committed readers never see its records;
- kill -9 of the broker with a transaction open: after the restart the
  coordinator and the partitions recover their state from the logs, the
  open transaction is aborted (timeout or the next producer's
  init_transactions), committed ones stay committed;
- `transaction.durable.at.commit` (the default): a transaction's batches are
  answered once written and made durable by its commit, so an unclean stop
  aborts the transactions it interrupted: the producer that flushed before
  the kill cannot commit after it (fenced), and none of its records is ever
  read as committed.

    .venv-compat/bin/pytest tests/broker/test_transactions.py -q -p no:cacheprovider
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from kafki_harness import create_topic, read_all, wait_until

pytestmark = pytest.mark.timeout(180)


def txn_producer(bootstrap: str, txn_id: str, **extra) -> Producer:
    config = {"bootstrap.servers": bootstrap, "transactional.id": txn_id,
              "transaction.timeout.ms": 30000, "linger.ms": 5, **extra}
    return Producer(config)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [tp.offset for tp in got]
    finally:
        c.close()


def high_and_stable(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    """(high watermark, last stable offset): ListOffsets latest with
    read_uncommitted and with read_committed."""
    marks = []
    for isolation in ("read_uncommitted", "read_committed"):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lso-{time.time()}",
                      "isolation.level": isolation})
        try:
            marks.append(c.get_watermark_offsets(TopicPartition(topic, partition),
                                                 timeout=10)[1])
        finally:
            c.close()
    return marks[0], marks[1]


def test_commit_and_abort_across_partitions(broker):
    topic = "txn-basic"
    create_topic(broker.bootstrap, topic, partitions=3)
    p = txn_producer(broker.bootstrap, "basic")
    p.init_transactions(20)
    committed: dict[int, list[str]] = {0: [], 1: [], 2: []}
    everything: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for round_ in range(4):
        p.begin_transaction()
        for i in range(9):
            value = f"r{round_}-{i}"
            p.produce(topic, value=value.encode(), partition=i % 3)
            everything[i % 3].append(value)
        p.flush(20)
        if round_ % 2 == 0:
            p.commit_transaction(20)
            for i in range(9):
                committed[i % 3].append(f"r{round_}-{i}")
        else:
            p.abort_transaction(20)
    assert read_all(broker.bootstrap, topic, 3, "read_committed", 18) == committed
    assert read_all(broker.bootstrap, topic, 3, "read_uncommitted", 36) == everything
    # 4 transactions × (3 records + 1 marker) per partition; nothing open.
    for partition in range(3):
        assert high_and_stable(broker.bootstrap, topic, partition) == (16, 16)


def test_offsets_sent_to_a_transaction_commit_with_it(broker):
    source, sink, group = "txn-source", "txn-sink", "txn-group"
    create_topic(broker.bootstrap, source, partitions=2)
    create_topic(broker.bootstrap, sink, partitions=1)
    feeder = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(20):
        feeder.produce(source, value=f"in-{i}".encode(), partition=i % 2)
    assert feeder.flush(20) == 0

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(source, 0, 0), TopicPartition(source, 1, 0)])
    p = txn_producer(broker.bootstrap, "processor")
    p.init_transactions(20)
    try:
        def process(n: int, commit: bool):
            p.begin_transaction()
            seen = 0
            while seen < n:
                m = consumer.poll(1.0)
                if m is None or m.error():
                    continue
                p.produce(sink, value=m.value().upper(), partition=0)
                seen += 1
            p.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                          consumer.consumer_group_metadata(), 20)
            if commit:
                p.commit_transaction(20)
            else:
                p.abort_transaction(20)

        process(10, commit=True)
        after_commit = committed_offsets(broker.bootstrap, group, source, 2)
        # A partition the 10 records did not come from has no position (-1001).
        assert sum(o for o in after_commit if o >= 0) == 10, after_commit
        process(10, commit=False)
        assert committed_offsets(broker.bootstrap, group, source, 2) == after_commit, \
            "an aborted transaction's offsets became visible"
    finally:
        consumer.close()
    out = read_all(broker.bootstrap, sink, 1, "read_committed", 10)[0]
    # The committed transaction's ten outputs, each once; none of the aborted one's.
    assert len(out) == 10 and len(set(out)) == 10 and all(v.startswith("IN-") for v in out), out


def test_a_plain_commit_made_during_a_transaction_outlives_its_offsets(broker):
    """Kafka's rule: when a transaction commits, its offsets replace a
    partition's committed offset only if that was stored before them; a
    plain OffsetCommit made while the transaction was open stays."""
    topic, group = "txn-plain", "txn-plain-group"
    create_topic(broker.bootstrap, topic, partitions=1)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    p = txn_producer(broker.bootstrap, "plain-and-txn")
    p.init_transactions(20)
    try:
        metadata = consumer.consumer_group_metadata()
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(topic, 0, 10)], metadata, 20)
        # (Not read back here: librdkafka asks for stable offsets, which
        # Kafka and Kafki refuse while a transaction's offsets are pending.)
        consumer.commit(offsets=[TopicPartition(topic, 0, 20)], asynchronous=False)
        p.commit_transaction(20)
        assert committed_offsets(broker.bootstrap, group, topic, 1) == [20], \
            "the transaction's older offset replaced a later plain commit"
        # A plain commit stored before a transaction's offsets is replaced.
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(topic, 0, 25)], metadata, 20)
        p.commit_transaction(20)
        assert committed_offsets(broker.bootstrap, group, topic, 1) == [25]
        # Both survive a restart as they were (the replay applies the rule too).
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(topic, 0, 30)], metadata, 20)
        consumer.commit(offsets=[TopicPartition(topic, 0, 40)], asynchronous=False)
        p.commit_transaction(20)
    finally:
        consumer.close()
    broker.restart_after_kill()
    assert committed_offsets(broker.bootstrap, group, topic, 1) == [40]


def test_a_second_producer_with_the_same_id_fences_the_first(broker):
    topic = "txn-fence"
    create_topic(broker.bootstrap, topic, partitions=1)
    zombie = txn_producer(broker.bootstrap, "fenced-id")
    zombie.init_transactions(20)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"zombie", partition=0)
    zombie.flush(20)

    successor = txn_producer(broker.bootstrap, "fenced-id")
    # Aborts the zombie's open transaction, then hands out a newer epoch.
    successor.init_transactions(30)
    successor.begin_transaction()
    successor.produce(topic, value=b"successor", partition=0)
    successor.commit_transaction(20)

    with pytest.raises(KafkaException) as raised:
        zombie.produce(topic, value=b"zombie-again", partition=0)
        zombie.commit_transaction(20)
    error = raised.value.args[0]
    assert error.fatal() or error.name() in ("PRODUCER_FENCED", "_FENCED",
                                             "INVALID_PRODUCER_EPOCH"), error
    assert read_all(broker.bootstrap, topic, 1, "read_committed", 1)[0] == ["successor"]


def test_a_hung_transaction_is_aborted_after_its_timeout(broker):
    topic = "txn-hung"
    create_topic(broker.bootstrap, topic, partitions=1)
    hung = txn_producer(broker.bootstrap, "hung", **{"transaction.timeout.ms": 3000})
    hung.init_transactions(20)
    hung.begin_transaction()
    for i in range(5):
        hung.produce(topic, value=f"hung-{i}".encode(), partition=0)
    hung.flush(20)
    high, stable = high_and_stable(broker.bootstrap, topic, 0)
    assert (high, stable) == (5, 0), "an open transaction must hold the last stable offset"

    # The producer never ends it: the coordinator aborts it (marker at 5).
    wait_until(lambda: high_and_stable(broker.bootstrap, topic, 0) == (6, 6), 20, 0.5,
               "the coordinator aborting the timed-out transaction")
    later = txn_producer(broker.bootstrap, "later")
    later.init_transactions(20)
    later.begin_transaction()
    later.produce(topic, value=b"after", partition=0)
    later.commit_transaction(20)
    assert read_all(broker.bootstrap, topic, 1, "read_committed", 1)[0] == ["after"]


def committed_then_open(bootstrap: str, topic: str, txn_id: str, committed: int,
                        open_prefix: str) -> Producer:
    """A 2-partition topic, one committed transaction of `committed` records
    (`kept-i`), then one left open with 6 records (`<open_prefix>-i`), flushed:
    every batch acknowledged."""
    create_topic(bootstrap, topic, partitions=2)
    p = txn_producer(bootstrap, txn_id)
    p.init_transactions(20)
    p.begin_transaction()
    for i in range(committed):
        p.produce(topic, value=f"kept-{i}".encode(), partition=i % 2)
    p.commit_transaction(20)
    p.begin_transaction()
    for i in range(6):
        p.produce(topic, value=f"{open_prefix}-{i}".encode(), partition=i % 2)
    p.flush(20)
    return p


def test_kill_9_with_a_transaction_open(broker):
    topic = "txn-crash"
    committed_then_open(broker.bootstrap, topic, "crashing", 6, "lost")

    broker.restart_after_kill()
    # The application restarts too: init_transactions aborts what was open.
    again = txn_producer(broker.bootstrap, "crashing")
    again.init_transactions(60)
    again.begin_transaction()
    again.produce(topic, value=b"after-restart", partition=0)
    again.commit_transaction(30)
    got = read_all(broker.bootstrap, topic, 2, "read_committed", 7)
    assert got == {0: ["kept-0", "kept-2", "kept-4", "after-restart"],
                   1: ["kept-1", "kept-3", "kept-5"]}, got
    # Once the abort is written nothing is open: stable = high on both.
    for partition in range(2):
        high, stable = high_and_stable(broker.bootstrap, topic, partition)
        assert stable == high, (partition, high, stable)


def test_an_unclean_stop_aborts_the_transaction_it_interrupted(broker):
    topic = "txn-interrupted"
    # The open transaction's batches are answered once written, maybe not
    # yet synced when the broker is killed.
    p = committed_then_open(broker.bootstrap, topic, "interrupted", 4, "acked")

    broker.restart_after_kill()
    # The coordinator aborted the interrupted transaction at its load, with
    # the epoch bumped: committing it now would commit data the stop may
    # have lost, so the producer is fenced instead.
    with pytest.raises(KafkaException) as raised:
        p.commit_transaction(30)
    error = raised.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), error
    assert "log partition loaded" in broker.log_text()
    assert "aborted_after_unclean_stop=1" in broker.log_text(), broker.log_text()[-3000:]
    got = read_all(broker.bootstrap, topic, 2, "read_committed", 4)
    assert got == {0: ["kept-0", "kept-2"], 1: ["kept-1", "kept-3"]}, got
    for partition in range(2):
        wait_until(lambda: (lambda hs: hs[0] == hs[1])(high_and_stable(broker.bootstrap, topic,
                                                                        partition)),
                   20, 0.5, f"the abort marker on partition {partition}")
