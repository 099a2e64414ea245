"""confluent-kafka (current librdkafka) against the broker under test."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from conftest import create_topic, require_module, unique, wait_for_topic, wait_until

CLIENT_TIMEOUTS = {
    "socket.timeout.ms": 10000,
    "message.timeout.ms": 20000,
}


@pytest.fixture
def ck():
    return require_module("confluent_kafka")


def producer(ck, bootstrap, **extra):
    conf = {"bootstrap.servers": bootstrap, **CLIENT_TIMEOUTS, **extra}
    return ck.Producer(conf)


def consumer(ck, bootstrap, group=None, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group or unique("g"),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "socket.timeout.ms": 10000,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        **extra,
    }
    return ck.Consumer(conf)


def produce_all(p, topic, records, timeout=30):
    """records: list of dicts with key/value/headers/timestamp/partition. Returns delivered msgs."""
    errors, delivered = [], []

    def cb(err, msg):
        (errors if err else delivered).append(err or msg)

    for r in records:
        kw = {k: v for k, v in r.items() if v is not None}
        p.produce(topic, on_delivery=cb, **kw)
        p.poll(0)
    left = p.flush(timeout)
    assert left == 0, f"{left} messages not delivered within {timeout}s"
    assert not errors, f"delivery errors: {errors[:5]}"
    return delivered


def consume_n(c, n, timeout=30):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        assert m.error() is None, f"consumer error: {m.error()}"
        out.append(m)
    assert len(out) == n, f"consumed {len(out)} of {n} messages within {timeout}s"
    return out


# --------------------------------------------------------------------------- admin


def test_admin_create_list_describe(ck, admin, bootstrap):
    ck_admin = require_module("confluent_kafka.admin")
    topic = unique("admin")
    create_topic(admin, topic, partitions=3,
                 config={"retention.ms": "123456789", "cleanup.policy": "delete"})

    # list
    md = admin.list_topics(timeout=10)
    assert topic in md.topics
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    assert md.brokers, "metadata lists no broker"
    for p in md.topics[topic].partitions.values():
        assert p.leader in md.brokers
        assert p.replicas == [p.leader] and p.isrs == [p.leader]

    # creating it again: TOPIC_ALREADY_EXISTS
    futs = admin.create_topics([ck_admin.NewTopic(topic, 3, 1)], request_timeout=15)
    with pytest.raises(ck.KafkaException) as ei:
        futs[topic].result(timeout=15)
    assert ei.value.args[0].code() == ck.KafkaError.TOPIC_ALREADY_EXISTS

    # describe topics
    res = admin.describe_topics(ck.TopicCollection([topic]), request_timeout=15)
    desc = res[topic].result(timeout=15)
    assert desc.name == topic
    assert [p.id for p in desc.partitions] == [0, 1, 2]
    assert not desc.is_internal

    # describe configs: our override is DYNAMIC_TOPIC_CONFIG, and defaults are listed too
    res = admin.describe_configs([ck_admin.ConfigResource(ck_admin.ResourceType.TOPIC, topic)],
                                 request_timeout=15)
    configs = list(res.values())[0].result(timeout=15)
    assert configs["retention.ms"].value == "123456789"
    assert configs["retention.ms"].source == ck_admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "delete"
    for name in ("segment.bytes", "max.message.bytes", "min.insync.replicas",
                 "message.timestamp.type", "compression.type"):
        assert name in configs, f"DescribeConfigs lacks default config {name}"
    assert configs["message.timestamp.type"].value == "CreateTime"

    # unknown topic
    res = admin.describe_topics(ck.TopicCollection([unique("nope")]), request_timeout=15)
    with pytest.raises(ck.KafkaException) as ei:
        list(res.values())[0].result(timeout=15)
    assert ei.value.args[0].code() == ck.KafkaError.UNKNOWN_TOPIC_OR_PART

    # delete
    futs = admin.delete_topics([topic], operation_timeout=15, request_timeout=15)
    futs[topic].result(timeout=15)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 15, 0.2, "topic deleted")


def test_describe_cluster_and_broker_configs(ck, admin):
    ck_admin = require_module("confluent_kafka.admin")
    cluster = admin.describe_cluster(request_timeout=15).result(timeout=15)
    assert cluster.nodes, "DescribeCluster returned no node"
    assert cluster.controller is not None
    broker_id = str(cluster.nodes[0].id)
    res = admin.describe_configs([ck_admin.ConfigResource(ck_admin.ResourceType.BROKER, broker_id)],
                                 request_timeout=15)
    configs = list(res.values())[0].result(timeout=15)
    for name in ("log.retention.hours", "num.partitions", "message.max.bytes",
                 "auto.create.topics.enable"):
        assert name in configs, f"broker DescribeConfigs lacks {name}"


# --------------------------------------------------------------------------- produce / consume


def make_records(n, seed, partition=0, base_ts=None):
    rnd = random.Random(seed)
    base_ts = base_ts or (int(time.time() * 1000) - 3_600_000)
    recs = []
    for i in range(n):
        if i % 10 == 3:
            key = None  # null key
        else:
            key = rnd.randbytes(rnd.choice([0, 1, 7, 64]))
        if i % 10 == 7:
            value = None  # tombstone / null value
        elif i % 10 == 5:
            value = (b"compressible " * 2000)  # 26 KB, compresses well
        else:
            value = rnd.randbytes(rnd.choice([0, 1, 100, 1000, 5000]))
        headers = [("h-idx", str(i).encode()), ("bin", rnd.randbytes(8)), ("dup", b"1"), ("dup", b"2")]
        if i % 4 == 0:
            headers.append(("empty", b""))
        if i % 9 == 0:
            headers = []
        recs.append({"key": key, "value": value, "headers": headers or None,
                     "timestamp": base_ts + i * 1000 + rnd.randint(0, 999), "partition": partition})
    return recs


def check_messages(msgs, recs, ck, topic):
    for i, (m, r) in enumerate(zip(msgs, recs)):
        assert m.topic() == topic
        assert m.offset() == i, f"offset {m.offset()} != {i}"
        assert m.key() == r["key"], f"key mismatch at {i}"
        assert m.value() == r["value"], f"value mismatch at {i}"
        got_headers = m.headers() or []
        assert got_headers == (r["headers"] or []), f"headers mismatch at {i}: {got_headers}"
        ts_type, ts = m.timestamp()
        assert ts_type == ck.TIMESTAMP_CREATE_TIME
        assert ts == r["timestamp"], f"timestamp mismatch at {i}"


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_compression(ck, bootstrap, new_topic, compression):
    topic = new_topic(1, prefix=f"comp-{compression}")
    recs = make_records(60, seed=hash(compression) & 0xFFFF)
    # Records at offsets in send order across three batches: only the
    # idempotent producer promises that. Without it a retried first batch
    # lands after the others (seen on the 3-node cluster: the fresh topic's
    # leader refused the first request before it had opened the partition,
    # as Kafka's does before its metadata names it leader).
    p = producer(ck, bootstrap, **{"compression.type": compression, "linger.ms": 20,
                                   "batch.num.messages": 25, "enable.idempotence": True})
    delivered = produce_all(p, topic, recs)
    assert sorted(m.offset() for m in delivered) == list(range(len(recs)))

    c = consumer(ck, bootstrap)
    try:
        c.assign([ck.TopicPartition(topic, 0, 0)])
        msgs = consume_n(c, len(recs))
        check_messages(msgs, recs, ck, topic)
        lo, hi = c.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=10)
        assert (lo, hi) == (0, len(recs))
    finally:
        c.close()


def test_fetch_from_middle_of_batch(ck, bootstrap, new_topic):
    """A fetch at an offset inside a (compressed) batch must deliver from exactly that offset."""
    topic = new_topic(1, prefix="midbatch")
    recs = [{"key": None, "value": f"v{i}".encode(), "headers": None, "timestamp": None,
             "partition": 0} for i in range(20)]
    p = producer(ck, bootstrap, **{"compression.type": "lz4", "linger.ms": 50,
                                   "enable.idempotence": True})  # send order kept
    produce_all(p, topic, recs)
    c = consumer(ck, bootstrap)
    try:
        c.assign([ck.TopicPartition(topic, 0, 13)])
        msgs = consume_n(c, 7)
        assert [m.offset() for m in msgs] == list(range(13, 20))
        assert [m.value() for m in msgs] == [f"v{i}".encode() for i in range(13, 20)]
    finally:
        c.close()


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_offsets_for_times_exact(ck, bootstrap, new_topic, compression):
    topic = new_topic(1, prefix="oft")
    base = int(time.time() * 1000) - 600_000
    # one batch (linger) with non-monotonic timestamps: lookups must be per record, not per batch
    deltas = [0, 1000, 2000, 2000, 5000, 3000, 8000]
    recs = [{"key": None, "value": f"m{i}".encode(), "headers": None, "timestamp": base + d,
             "partition": 0} for i, d in enumerate(deltas)]
    p = producer(ck, bootstrap, **{"linger.ms": 200, "compression.type": compression})
    produce_all(p, topic, recs)

    c = consumer(ck, bootstrap)
    try:
        def lookup(ts):
            res = c.offsets_for_times([ck.TopicPartition(topic, 0, ts)], timeout=10)
            assert res[0].error is None, res[0].error
            return res[0].offset

        cases = {
            base - 5000: 0,
            base: 0,
            base + 1: 1,
            base + 1000: 1,
            base + 1500: 2,
            base + 2000: 2,
            base + 2001: 4,   # 5000 at offset 4 is the first timestamp >= 2001
            base + 3000: 4,
            base + 5000: 4,
            base + 5001: 6,
            base + 8000: 6,
        }
        got = {ts - base: lookup(ts) for ts in cases}
        want = {ts - base: off for ts, off in cases.items()}
        assert got == want
        # past the last timestamp: no offset (-1 = OFFSET_END)
        assert lookup(base + 9000) == -1
        # a second batch
        recs2 = [{"key": None, "value": b"late", "headers": None, "timestamp": base + 20000,
                  "partition": 0}]
        produce_all(p, topic, recs2)
        assert lookup(base + 9000) == 7
        assert lookup(base + 20000) == 7
    finally:
        c.close()


def test_max_message_bytes_enforced(ck, bootstrap, new_topic):
    topic = new_topic(1, {"max.message.bytes": "10000"}, prefix="toolarge")
    p = producer(ck, bootstrap, **{"compression.type": "none", "linger.ms": 0})
    errors = []
    # separate flushes: one batch holding both would be rejected whole
    p.produce(topic, value=os.urandom(20000), on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0
    p.produce(topic, value=b"small", on_delivery=lambda e, m: errors.append(e))
    assert p.flush(30) == 0
    codes = sorted(e.code() if e else 0 for e in errors)
    assert codes == [0, ck.KafkaError.MSG_SIZE_TOO_LARGE], errors


def test_auto_create_topic_on_produce(ck, bootstrap, admin):
    """Kafka's default auto.create.topics.enable=true: producing to an unknown topic creates it."""
    topic = unique("autocreate")
    p = producer(ck, bootstrap, **{"allow.auto.create.topics": True})
    produce_all(p, topic, [{"key": b"k", "value": b"v", "headers": None, "timestamp": None,
                            "partition": None}])
    wait_for_topic(admin, topic)


# --------------------------------------------------------------------------- groups


def test_consumer_group_two_members_leave_commit_resume(ck, bootstrap, new_topic):
    nparts = 4
    topic = new_topic(nparts, prefix="group2")
    group = unique("g2")
    p = producer(ck, bootstrap, **{"linger.ms": 5})
    per_part = 5

    def produce_round(tag):
        recs = [{"key": f"{tag}-{part}-{i}".encode(), "value": f"{tag}:{part}:{i}".encode(),
                 "headers": None, "timestamp": None, "partition": part}
                for part in range(nparts) for i in range(per_part)]
        produce_all(p, topic, recs)
        return {r["value"] for r in recs}

    extra = {"partition.assignment.strategy": "range,roundrobin"}
    c1 = consumer(ck, bootstrap, group, **extra)
    c2 = consumer(ck, bootstrap, group, **extra)
    c1.subscribe([topic])
    c2.subscribe([topic])
    seen = {"c1": [], "c2": []}

    def poll_both(t=0.1):
        for name, c in (("c1", c1), ("c2", c2)):
            m = c.poll(t)
            if m is not None and m.error() is None:
                seen[name].append(m)
            elif m is not None and m.error().code() != ck.KafkaError._PARTITION_EOF:
                raise AssertionError(f"{name}: {m.error()}")

    def balanced():
        poll_both()
        a1, a2 = c1.assignment(), c2.assignment()
        return len(a1) > 0 and len(a2) > 0 and len(a1) + len(a2) == nparts

    try:
        # both members in one generation before any data: otherwise the first member reads
        # partitions that then move, uncommitted, and are (rightly) read again by the other
        wait_until(balanced, 45, 0, "both members assigned")
        want1 = produce_round("a")
        wait_until(lambda: (poll_both(), len(seen["c1"]) + len(seen["c2"]) >= len(want1))[1],
                   30, 0, "round a consumed")
        poll_both(0.3)
        got = [m.value() for m in seen["c1"] + seen["c2"]]
        assert sorted(got) == sorted(want1), "each message once across the two members"
        parts1 = {tp.partition for tp in c1.assignment()}
        parts2 = {tp.partition for tp in c2.assignment()}
        assert parts1.isdisjoint(parts2) and parts1 | parts2 == set(range(nparts))
        assert {m.partition() for m in seen["c1"]} <= parts1
        assert {m.partition() for m in seen["c2"]} <= parts2
        # both commit what they consumed; then c1 leaves
        c1.commit(asynchronous=False)
        c2.commit(asynchronous=False)
    finally:
        c1.close()  # LeaveGroup

    try:
        seen["c2"] = []

        def poll_c2():
            m = c2.poll(0.1)
            if m is not None:
                assert m.error() is None, m.error()
                seen["c2"].append(m)

        # c2 learns of the rebalance on its next heartbeat and takes over c1's partitions
        wait_until(lambda: (poll_c2(), len(c2.assignment()) == nparts)[1], 45, 0,
                   "c2 owns every partition")
        assert seen["c2"] == [], "nothing left to read after round a was committed"
        want2 = produce_round("b")
        wait_until(lambda: (poll_c2(), len(seen["c2"]) >= len(want2))[1], 30, 0,
                   "c2 read round b")
        extra_msg = c2.poll(0.3)
        assert extra_msg is None or extra_msg.error() is not None, "unexpected extra message"
        # c2 resumed every partition (its own and c1's) from the committed offsets
        assert sorted(m.value() for m in seen["c2"]) == sorted(want2)
        c2.commit(asynchronous=False)
        committed = c2.committed([ck.TopicPartition(topic, i) for i in range(nparts)], timeout=10)
        assert [tp.offset for tp in committed] == [2 * per_part] * nparts
    finally:
        c2.close()

    want3 = produce_round("c")
    c3 = consumer(ck, bootstrap, group, **extra)
    try:
        c3.subscribe([topic])
        got3 = consume_n(c3, len(want3), timeout=45)
        assert {m.value() for m in got3} == want3, "resumed from committed offsets"
        assert all(m.offset() >= 2 * per_part for m in got3)
        extra_msg = c3.poll(1.0)
        assert extra_msg is None or extra_msg.error() is not None, "unexpected extra message"
    finally:
        c3.close()


def test_commit_metadata_roundtrip(ck, bootstrap, new_topic):
    topic = new_topic(2, prefix="commitmeta")
    group = unique("gmeta")
    c = consumer(ck, bootstrap, group)
    try:
        tps = [ck.TopicPartition(topic, 0, 5, metadata="hello-metadata"),
               ck.TopicPartition(topic, 1, 7)]
        res = c.commit(offsets=tps, asynchronous=False)
        assert all(tp.error is None for tp in res), res
        got = c.committed([ck.TopicPartition(topic, 0), ck.TopicPartition(topic, 1)], timeout=10)
        assert [tp.offset for tp in got] == [5, 7]
        assert got[0].metadata == "hello-metadata"
    finally:
        c.close()


def test_list_and_describe_consumer_groups(ck, bootstrap, admin, new_topic):
    topic = new_topic(1, prefix="lsgroups")
    group = unique("glist")
    c = consumer(ck, bootstrap, group)
    try:
        c.subscribe([topic])
        wait_until(lambda: (c.poll(0.2), c.assignment())[1], 30, 0, "assignment")
        groups = admin.list_consumer_groups(request_timeout=15).result(timeout=15)
        assert group in {g.group_id for g in groups.valid}
        desc = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=15)
        assert desc.group_id == group
        assert len(desc.members) == 1
        assert {tp.partition for tp in desc.members[0].assignment.topic_partitions} == {0}
    finally:
        c.close()


# --------------------------------------------------------------------------- idempotence


def test_idempotent_producer_acks_all(ck, bootstrap, new_topic):
    nparts = 3
    topic = new_topic(nparts, prefix="idem")
    stats = []
    p = producer(ck, bootstrap, **{
        "enable.idempotence": True, "acks": "all", "max.in.flight.requests.per.connection": 5,
        "linger.ms": 2, "batch.num.messages": 50, "compression.type": "lz4",
        "statistics.interval.ms": 100, "stats_cb": lambda s: stats.append(json.loads(s)),
    })
    n = 600
    recs = [{"key": f"k{i % nparts}".encode(), "value": f"{i}".encode(), "headers": None,
             "timestamp": None, "partition": i % nparts} for i in range(n)]
    produce_all(p, topic, recs)
    wait_until(lambda: (p.poll(0.05), any(s.get("eos", {}).get("producer_id", -1) >= 0
                                           for s in stats))[1], 10, 0, "stats with eos block")
    eos = [s["eos"] for s in stats if s.get("eos", {}).get("producer_id", -1) >= 0][-1]
    assert eos["idemp_state"] == "Assigned", eos
    assert eos["producer_epoch"] >= 0

    c = consumer(ck, bootstrap)
    try:
        c.assign([ck.TopicPartition(topic, i, 0) for i in range(nparts)])
        msgs = consume_n(c, n)
        for part in range(nparts):
            vals = [int(m.value()) for m in msgs if m.partition() == part]
            assert vals == list(range(part, n, nparts)), f"partition {part}: order/duplicates"
            offs = [m.offset() for m in msgs if m.partition() == part]
            assert offs == list(range(len(offs)))
    finally:
        c.close()


# --------------------------------------------------------------------------- transactions (extra)


def test_transactions_read_committed_hides_aborted(ck, bootstrap, new_topic):
    """Beyond the brief's list: a transactional producer commits one transaction and aborts
    another; read_committed shows only the committed records, read_uncommitted shows all."""
    topic = new_topic(1, prefix="txn")
    p = producer(ck, bootstrap, **{"transactional.id": unique("txid"),
                                   "transaction.timeout.ms": 30000})
    p.init_transactions(20)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"committed-{i}".encode(), partition=0)
    p.commit_transaction(20)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=f"aborted-{i}".encode(), partition=0)
    p.flush(20)
    p.abort_transaction(20)
    p.begin_transaction()
    p.produce(topic, value=b"committed-last", partition=0)
    p.commit_transaction(20)

    def read(isolation, n):
        c = consumer(ck, bootstrap, **{"isolation.level": isolation})
        try:
            c.assign([ck.TopicPartition(topic, 0, 0)])
            msgs = consume_n(c, n)
            extra = c.poll(0.5)
            assert extra is None or extra.error() is not None, f"extra: {extra.value()}"
            return [m.value().decode() for m in msgs]
        finally:
            c.close()

    want = [f"committed-{i}" for i in range(5)] + ["committed-last"]
    assert read("read_committed", 6) == want
    allv = read("read_uncommitted", 11)
    assert allv == [f"committed-{i}" for i in range(5)] + [f"aborted-{i}" for i in range(5)] + \
        ["committed-last"]


def test_create_partitions_and_delete_records(ck, bootstrap, admin):
    ck_admin = require_module("confluent_kafka.admin")
    topic = unique("grow")
    create_topic(admin, topic, partitions=1)

    # CreatePartitions: 1 -> 3, then a shrink is refused.
    futs = admin.create_partitions([ck_admin.NewPartitions(topic, 3)], request_timeout=15)
    futs[topic].result(timeout=15)
    wait_until(lambda: len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3,
               15, 0.2, "three partitions")
    futs = admin.create_partitions([ck_admin.NewPartitions(topic, 2)], request_timeout=15)
    with pytest.raises(ck.KafkaException) as ei:
        futs[topic].result(timeout=15)
    assert ei.value.args[0].code() == ck.KafkaError.INVALID_PARTITIONS

    # The new partitions take writes.
    p = producer(ck, bootstrap, acks="all")
    produce_all(p, topic, [{"value": f"v{i}".encode(), "partition": 2} for i in range(10)])

    # DeleteRecords before offset 4 of partition 2: the start moves, reads begin there.
    futs = admin.delete_records([ck.TopicPartition(topic, 2, 4)], request_timeout=15)
    deleted = list(futs.values())[0].result(timeout=15)
    assert deleted.low_watermark == 4
    c = consumer(ck, bootstrap)
    c.assign([ck.TopicPartition(topic, 2, ck.OFFSET_BEGINNING)])
    msgs = consume_n(c, 6)
    assert [m.offset() for m in msgs] == list(range(4, 10))
    assert [m.value() for m in msgs] == [f"v{i}".encode() for i in range(4, 10)]
    low, high = c.get_watermark_offsets(ck.TopicPartition(topic, 2), timeout=10)
    assert (low, high) == (4, 10)
    c.close()
