"""Log compaction end to end with confluent-kafka against the real binary:
a compacted user topic keeps the latest record of every key (compressed
batches too), refuses records without a key, and __consumer_offsets stays
bounded while committed offsets and their metadata survive SIGTERM and
kill -9 restarts."""

from __future__ import annotations

import os
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from kafki_harness import (connect, create_topic, parse_produce_v9_response, produce_v9,
                           record_batch, recv_response, wait_until)

SEGMENT_BYTES = 16384  # the smallest segment.bytes Kafki accepts
FAST_CLEANER = {"log.cleaner.backoff.ms": "200"}


def metric(broker, name: str) -> float:
    """Sum of a metric's series over all shards, from the admin listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def first_dirty(partition_dir: Path) -> int:
    """The cleaner checkpoint's first dirty offset (0 before any cleaning)."""
    try:
        lines = (partition_dir / "cleaner-checkpoint").read_text().split()
    except FileNotFoundError:
        return 0
    # 0 / gaps-below / count / (end time)*
    count = int(lines[2])
    return int(lines[3 + 2 * (count - 1)]) if count else 0


def segment_bases(partition_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in partition_dir.glob("*.log"))


def sealed_bytes(partition_dir: Path) -> int:
    """Bytes of every file but the active segment (preallocated, so its
    size on disk says nothing)."""
    bases = segment_bases(partition_dir)
    active = partition_dir / f"{bases[-1]:020}.log" if bases else None
    return sum(p.stat().st_size for p in partition_dir.iterdir() if p.is_file() and p != active)


def produce_updates(confluent_kafka, bootstrap, topic, keys, rounds):
    """`rounds` values for each of `keys`, half the messages through an
    uncompressed producer and half through compressed ones. Returns
    {offset: (key, value)} from the delivery reports."""
    delivered: dict[int, tuple[bytes, bytes]] = {}
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.offset()] = (msg.key(), msg.value())

    producers = [confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                           "linger.ms": 5, "compression.type": codec})
                 for codec in ("none", "lz4", "zstd", "gzip", "snappy")]
    for round_ in range(rounds):
        producer = producers[round_ % len(producers)]
        for key in keys:
            # Random enough not to compress away: segments must fill up.
            value = f"{key.decode()}-round-{round_:05}-{os.urandom(50).hex()}".encode()
            producer.produce(topic, key=key, value=value, on_delivery=report)
        producer.poll(0)
        if round_ % 20 == 19:
            producer.flush(20)
    for producer in producers:
        assert producer.flush(30) == 0
    assert not errors, errors[:3]
    return delivered


def consume_all(confluent_kafka, bootstrap, topic):
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    try:
        _, high = consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, 0),
                                                 timeout=10)
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        records, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    break
                raise AssertionError(message.error())
            records.append((message.offset(), message.key(), message.value()))
            if message.offset() >= high - 1:
                break
        return records, high
    finally:
        consumer.close()


@pytest.mark.timeout(180)
def test_compacted_topic_keeps_the_latest_value_of_every_key(broker_factory):
    import confluent_kafka

    broker = broker_factory(FAST_CLEANER)
    topic = f"compacted-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, config={
        "cleanup.policy": "compact", "segment.bytes": str(SEGMENT_BYTES),
        "min.cleanable.dirty.ratio": "0.01"})
    # DescribeConfigs lists the compaction settings, overrides and defaults.
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.cleanable.dirty.ratio"].value == "0.01"
    assert configs["delete.retention.ms"].value == "86400000"
    assert configs["min.compaction.lag.ms"].value == "0"
    assert configs["max.compaction.lag.ms"].value == "9223372036854775807"
    assert configs["delete.retention.ms"].is_default

    keys = [f"key-{index}".encode() for index in range(8)]
    delivered = produce_updates(confluent_kafka, broker.bootstrap, topic, keys, 300)
    # Then other keys, so that the latest values of the first ones end up in
    # sealed segments, which the cleaner rewrites.
    late = [f"late-{index}".encode() for index in range(8)]
    delivered.update(produce_updates(confluent_kafka, broker.bootstrap, topic, late, 60))
    keys += late
    assert len(delivered) == 2400 + 480
    directory = broker.partition_dir(topic, 0)
    # Wait until every sealed segment is cleaned.
    wait_until(lambda: first_dirty(directory) == segment_bases(directory)[-1], 60, 0.2,
               "the cleaner to reach the active segment")
    # The cleaner writes its checkpoint (what the wait above sees) before the
    # pass returns and its counters are added: wait for them too.
    wait_until(lambda: metric(broker, "kafki_cleaner_removed_records_total") > 1500, 10, 0.1,
               "the cleaner's removed-records counter")
    assert metric(broker, "kafki_cleaner_written_bytes_total") > 0
    clean_end = first_dirty(directory)

    records, high = consume_all(confluent_kafka, broker.bootstrap, topic)
    assert high == max(delivered) + 1, "compaction never moves the end of the log"
    offsets = [offset for offset, _, _ in records]
    assert offsets == sorted(set(offsets)), "offsets strictly increase"
    latest = {}
    for offset in sorted(delivered):
        latest[delivered[offset][0]] = offset
    for offset, key, value in records:
        assert delivered[offset] == (key, value), f"record at {offset} is not what was produced"
        if offset < clean_end:
            assert latest[key] == offset, f"superseded record at {offset} in the cleaned part"
    consumed = {offset for offset in offsets}
    assert all(latest[key] in consumed for key in keys), "a key lost its latest value"
    cleaned_part = [offset for offset in offsets if offset < clean_end]
    assert len(cleaned_part) <= len(keys), "one record per key in the cleaned part"
    tail = [offset for offset in sorted(delivered) if offset >= clean_end]
    assert [offset for offset in offsets if offset >= clean_end] == tail, "the tail is whole"
    assert len(records) < len(delivered) / 5
    assert cleaned_part, "the latest values of the first keys lie in cleaned segments"
    print(f"compacted topic: {len(delivered)} produced, {len(records)} left, "
          f"{len(cleaned_part)} in the cleaned part below {clean_end}")

    # A consumer positioned on a removed offset gets the next batch.
    removed = next(offset for offset in sorted(delivered) if offset not in consumed)
    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap,
                                         "group.id": "gap-reader", "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition(topic, 0, removed)])
    message = None
    for _ in range(100):
        message = consumer.poll(0.2)
        if message is not None and message.error() is None:
            break
    consumer.close()
    assert message is not None and message.error() is None
    assert message.offset() == min(offset for offset in consumed if offset > removed)

    # The cleaned log survives a restart and a kill -9 unchanged.
    broker.stop()
    broker.start()
    assert consume_all(confluent_kafka, broker.bootstrap, topic)[0] == records
    broker.restart_after_kill()
    assert consume_all(confluent_kafka, broker.bootstrap, topic)[0] == records


@pytest.mark.timeout(60)
def test_a_record_without_a_key_is_refused_by_a_compacted_topic(broker):
    import confluent_kafka

    topic = f"keys-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, config={"cleanup.policy": "compact"})
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    results = []
    producer.produce(topic, key=b"k", value=b"first", on_delivery=lambda e, m: results.append((e, m)))
    assert producer.flush(20) == 0
    # (A batch with one key-less record is refused whole, so send it alone.)
    producer.produce(topic, value=b"no key", on_delivery=lambda e, m: results.append((e, m)))
    assert producer.flush(20) == 0
    assert results[0][0] is None and results[0][1].offset() == 0
    assert results[1][0] is not None
    assert results[1][0].code() == confluent_kafka.KafkaError.INVALID_RECORD

    # On the wire: INVALID_RECORD (87) for a batch mixing keyed and key-less
    # records, and nothing of it appended.
    with connect(broker.port) as sock:
        sock.sendall(produce_v9(7, topic, 0, record_batch([(b"a", b"1"), (None, b"2")])))
        answer = parse_produce_v9_response(recv_response(sock))
        assert answer["error_code"] == 87, answer
        assert "without key" in (answer["error_message"] or ""), answer
        sock.sendall(produce_v9(8, topic, 0, record_batch([(b"a", b"3")])))
        answer = parse_produce_v9_response(recv_response(sock))
        assert answer["error_code"] == 0 and answer["base_offset"] == 1, answer

    # A topic that is not compacted takes key-less records as before.
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, plain)
    producer.produce(plain, value=b"no key needed")
    assert producer.flush(20) == 0


def committed(confluent_kafka, bootstrap, group, topic, partitions):
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                         "enable.auto.commit": False})
    try:
        return consumer.committed([confluent_kafka.TopicPartition(topic, p)
                                   for p in range(partitions)], timeout=10)
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_consumer_offsets_stay_bounded_and_survive_restarts(broker_factory):
    import confluent_kafka
    from confluent_kafka.admin import AdminClient

    broker = broker_factory({**FAST_CLEANER,
                             "offsets.topic.num.partitions": "1",
                             "offsets.topic.segment.bytes": str(SEGMENT_BYTES),
                             # Tombstones go at the cleaning after the one that
                             # first compacted them.
                             "log.cleaner.delete.retention.ms": "0"})
    topic = f"data-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, partitions=3)
    group, doomed = f"g-{topic}", f"doomed-{topic}"
    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                                         "enable.auto.commit": False})
    other = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": doomed,
                                      "enable.auto.commit": False})
    other.commit(offsets=[confluent_kafka.TopicPartition(topic, 0, 5, metadata="gone")],
                 asynchronous=False)
    other.close()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.delete_consumer_groups([doomed], request_timeout=10)[doomed].result(timeout=10)

    directory = broker.partition_dir("__consumer_offsets", 0)
    commits, sizes = 3000, []
    for index in range(1, commits + 1):
        offsets = [confluent_kafka.TopicPartition(topic, p, index * 10 + p, metadata=f"m-{index}-{p}")
                   for p in range(3)]
        consumer.commit(offsets=offsets, asynchronous=False)
        if index % 500 == 0:
            sizes.append(sealed_bytes(directory))
    consumer.close()
    # Without compaction 3000 commits of ~300 bytes would be ~900 KB of segments.
    wait_until(lambda: first_dirty(directory) == segment_bases(directory)[-1], 60, 0.2,
               "the cleaner to clean __consumer_offsets")
    settled = sealed_bytes(directory)
    print(f"__consumer_offsets sealed bytes during the run {sizes}, settled {settled}, segments {segment_bases(directory)}, removed {metric(broker, 'kafki_cleaner_removed_records_total')}")
    assert settled < 4 * SEGMENT_BYTES, f"sealed bytes {settled} (during the run: {sizes})"
    assert max(sizes[2:]) < 12 * SEGMENT_BYTES, f"growth during the run: {sizes}"
    # The cleaner writes its checkpoint (what the wait above sees) before the
    # pass returns and its counters are added: wait for them too.
    wait_until(lambda: metric(broker, "kafki_cleaner_removed_records_total") > 5000, 10, 0.1,
               "the cleaner's removed-records counter")

    def check():
        stored = committed(confluent_kafka, broker.bootstrap, group, topic, 3)
        assert [tp.offset for tp in stored] == [commits * 10 + p for p in range(3)]
        assert [tp.metadata for tp in stored] == [f"m-{commits}-{p}" for p in range(3)]
        gone = committed(confluent_kafka, broker.bootstrap, doomed, topic, 1)
        assert gone[0].offset < 0, "a deleted group's offsets came back"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        listed = admin.list_consumer_groups(request_timeout=10).result()
        names = {listing.group_id for listing in listed.valid}
        assert group in names and doomed not in names, names

    check()
    broker.stop()
    broker.start()
    check()
    broker.restart_after_kill()
    check()
    assert "offsets records not" not in broker.log_text(all_runs=True)


def consume_isolated(confluent_kafka, bootstrap, topic, isolation):
    """Every record of partition 0 from offset 0 with `isolation`, up to the
    end (the last stable offset for read_committed): [(offset, key, value)]."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": isolation, "enable.partition.eof": True,
        "fetch.wait.max.ms": 100})
    try:
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
        records, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    return records
                raise AssertionError(message.error())
            records.append((message.offset(), message.key(), message.value()))
        raise AssertionError(f"no end of partition within 30 s ({len(records)} records)")
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_transactional_writes_to_a_compacted_topic_are_compacted(broker_factory):
    """What Kafka Streams' exactly-once changelogs need: committed
    transactional records compact like any other, aborted ones are removed
    (and never hide a committed value), an open transaction stops the
    cleaning at the last stable offset, and both isolation levels read the
    right records before and after a restart."""
    import confluent_kafka

    broker = broker_factory(FAST_CLEANER)
    topic = f"txn-compacted-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic, config={
        "cleanup.policy": "compact", "segment.bytes": str(SEGMENT_BYTES),
        "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "0"})
    directory = broker.partition_dir(topic, 0)
    producer = confluent_kafka.Producer({
        "bootstrap.servers": broker.bootstrap, "transactional.id": f"txn-{topic}",
        "linger.ms": 5})
    producer.init_transactions(30)
    keys = [f"key-{index}".encode() for index in range(8)] + \
           [f"late-{index}".encode() for index in range(8)]
    latest_committed: dict[bytes, bytes] = {}
    aborted_values = set()
    for round_ in range(200):
        # The late keys only at the end: the first keys' latest values then
        # lie in sealed segments, which the cleaner rewrites.
        round_keys = keys[:8] if round_ < 160 else keys[8:]
        commit = round_ % 3 != 2
        producer.begin_transaction()
        written = {}
        for key in round_keys:
            kind = "committed" if commit else "aborted"
            value = f"{kind}-{key.decode()}-{round_:04}-{os.urandom(40).hex()}".encode()
            producer.produce(topic, key=key, value=value)
            written[key] = value
        if commit:
            producer.commit_transaction(30)
            latest_committed.update(written)
        else:
            producer.abort_transaction(30)
            aborted_values.update(written.values())

    wait_until(lambda: first_dirty(directory) == segment_bases(directory)[-1], 90, 0.2,
               "the cleaner to reach the active segment")
    clean_end = first_dirty(directory)
    # The cleaner writes its checkpoint (what the wait above sees) before the
    # pass returns and its counters are added: wait for them too.
    wait_until(lambda: metric(broker, "kafki_cleaner_removed_records_total") > 600, 10, 0.1,
               "the cleaner's removed-records counter")

    def check(clean_end):
        for isolation in ("read_committed", "read_uncommitted"):
            records = consume_isolated(confluent_kafka, broker.bootstrap, topic, isolation)
            # Only the transactional producer's keys (not the plain fillers).
            records = [record for record in records if record[1] in latest_committed]
            cleaned = [(offset, key, value) for offset, key, value in records if offset < clean_end]
            assert not [value for _, _, value in cleaned if value in aborted_values], \
                f"{isolation}: aborted records left in the cleaned part"
            assert len(cleaned) <= len(keys), f"{isolation}: {len(cleaned)} records in the cleaned part"
            seen = {}
            for _, key, value in records:
                seen[key] = value
            assert seen == latest_committed, f"{isolation}: a key's latest value is wrong"
            if isolation == "read_committed":
                assert not [value for _, _, value in records if value in aborted_values]
        print(f"transactional compacted topic: cleaned below {clean_end}, "
              f"{len(records)} records left of {200 * 8}")

    check(clean_end)

    # An open transaction stops the cleaning at its first offset.
    producer.begin_transaction()
    opened = []
    producer.produce(topic, key=b"key-0", value=b"open",
                     on_delivery=lambda err, msg: opened.append((err, msg.offset())))
    producer.flush(30)
    assert opened and opened[0][0] is None, opened
    open_offset = opened[0][1]
    plain = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for index in range(400):
        plain.produce(topic, key=f"filler-{index % 20}".encode(), value=os.urandom(100))
    assert plain.flush(30) == 0
    time.sleep(2)
    assert first_dirty(directory) <= open_offset, "the cleaner passed an open transaction"
    uncommitted = consume_isolated(confluent_kafka, broker.bootstrap, topic, "read_uncommitted")
    assert (open_offset, b"key-0", b"open") in uncommitted
    committed_view = consume_isolated(confluent_kafka, broker.bootstrap, topic, "read_committed")
    assert all(offset < open_offset for offset, _, _ in committed_view)
    # Aborted, it is cleaned away once the last stable offset moves on.
    producer.abort_transaction(30)
    aborted_values.add(b"open")
    for index in range(400):
        plain.produce(topic, key=f"filler-{index % 20}".encode(), value=os.urandom(100))
    assert plain.flush(30) == 0
    wait_until(lambda: first_dirty(directory) > open_offset
               and first_dirty(directory) == segment_bases(directory)[-1], 90, 0.2,
               "the cleaner to pass the aborted transaction")
    fillers = {f"filler-{index}".encode() for index in range(20)}

    def without_fillers(records):
        return [record for record in records if record[1] not in fillers]

    for isolation in ("read_committed", "read_uncommitted"):
        records = consume_isolated(confluent_kafka, broker.bootstrap, topic, isolation)
        assert b"open" not in {value for _, _, value in records}, isolation
    check(first_dirty(directory))

    # The cleaned log and the transaction state survive a restart and a kill -9.
    before = without_fillers(consume_isolated(confluent_kafka, broker.bootstrap, topic,
                                              "read_committed"))
    broker.stop()
    broker.start()
    assert without_fillers(consume_isolated(confluent_kafka, broker.bootstrap, topic,
                                            "read_committed")) == before
    broker.restart_after_kill()
    assert without_fillers(consume_isolated(confluent_kafka, broker.bootstrap, topic,
                                            "read_committed")) == before
