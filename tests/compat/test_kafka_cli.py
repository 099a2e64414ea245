"""Apache Kafka's own CLI tools (Java client) against the broker under test.

Uses the jars that scripts/install-test-deps.sh puts in ~/.cache/kafki/kafka-<ver>/libs,
run as `java -cp 'libs/*' <main class>` (what bin/kafka-*.sh do).
"""

from __future__ import annotations

import re
import time

from conftest import java_cmd, require_module, run, unique, wait_for_topic

TOPICS = "org.apache.kafka.tools.TopicCommand"
PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"

JVM_TIMEOUT = 60


def test_cli_quickstart(bootstrap):
    topic, group = unique("cli"), unique("gcli")
    bs = ["--bootstrap-server", bootstrap]

    cp = run(java_cmd(TOPICS, *bs, "--create", "--topic", topic, "--partitions", "1",
                      "--replication-factor", "1"), timeout=JVM_TIMEOUT)
    assert f"Created topic {topic}." in cp.stdout.decode()
    wait_for_topic(bootstrap, topic, 1)

    cp = run(java_cmd(TOPICS, *bs, "--list"), timeout=JVM_TIMEOUT)
    assert topic in cp.stdout.decode().split()

    cp = run(java_cmd(TOPICS, *bs, "--describe", "--topic", topic), timeout=JVM_TIMEOUT)
    text = cp.stdout.decode()
    assert re.search(rf"Topic: {re.escape(topic)}\s+TopicId: \S+\s+PartitionCount: 1\s+"
                     r"ReplicationFactor: 1", text), text
    assert re.search(rf"Topic: {re.escape(topic)}\s+Partition: 0\s+Leader: \d+\s+Replicas: \d+\s+"
                     r"Isr: \d+", text), text

    lines = [f"line {i} caf\u00e9 {'x' * i}" for i in range(25)]
    run(java_cmd(PRODUCER, *bs, "--topic", topic),
        input=("\n".join(lines) + "\n").encode(), timeout=JVM_TIMEOUT)

    cp = run(java_cmd(CONSUMER, *bs, "--topic", topic, "--from-beginning", "--max-messages",
                      str(len(lines)), "--timeout-ms", "30000", "--group", group),
             timeout=JVM_TIMEOUT)
    assert cp.stdout.decode().splitlines() == lines
    assert f"Processed a total of {len(lines)} messages" in cp.stderr.decode()

    # the console consumer committed on close: the group tool sees offset 25, lag 0
    cp = run(java_cmd(GROUPS, *bs, "--describe", "--group", group), timeout=JVM_TIMEOUT)
    rows = [line.split() for line in cp.stdout.decode().splitlines() if topic in line]
    assert rows, cp.stdout.decode()
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert rows[0][:6] == [group, topic, "0", "25", "25", "0"], rows


def test_java_producer_idempotent_by_default(bootstrap, tmp_path):
    """The Java producer enables idempotence by default (no config needed): it must get a
    producer id (InitProducerId) and write sequenced batches the broker accepts."""
    ck = require_module("confluent_kafka")
    topic = unique("javaidem")
    log_cfg = tmp_path / "log4j2.properties"
    log_cfg.write_text(
        "status = error\n"
        "appender.err.type = Console\nappender.err.name = STDERR\nappender.err.target = SYSTEM_ERR\n"
        "appender.err.layout.type = PatternLayout\nappender.err.layout.pattern = %p %c{1} %m%n\n"
        "rootLogger.level = warn\nrootLogger.appenderRef.err.ref = STDERR\n"
        "logger.tm.name = org.apache.kafka.clients.producer.internals.TransactionManager\n"
        "logger.tm.level = info\n")
    n = 300
    lines = [f"k{i % 7}\t{i}" for i in range(n)]
    # no acks / enable.idempotence given: rely on the Java defaults (acks=all, idempotent)
    cp = run(java_cmd(PRODUCER, "--bootstrap-server", bootstrap, "--topic", topic,
                      "--property", "parse.key=true",
                      "--producer-property", "linger.ms=5",
                      log_config=str(log_cfg)),
             input=("\n".join(lines) + "\n").encode(), timeout=JVM_TIMEOUT)
    err = cp.stderr.decode()
    m = re.search(r"ProducerId set to (-?\d+) with epoch (-?\d+)", err)
    assert m, f"producer never got a producer id:\n{err[-3000:]}"
    assert int(m.group(1)) >= 0 and int(m.group(2)) >= 0
    assert "ERROR" not in err, err[-3000:]

    # the topic was auto-created by the producer's metadata request; read it all back
    wait_for_topic(bootstrap, topic)
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": unique("g"),
                     "enable.auto.commit": False, "socket.timeout.ms": 10000})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([ck.TopicPartition(topic, p, 0) for p in md.partitions])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
        assert len(got) == n
        assert sorted(int(m.value()) for m in got) == list(range(n)), "duplicates or gaps"
        for m in got:
            assert m.key() == f"k{int(m.value()) % 7}".encode()
    finally:
        c.close()
