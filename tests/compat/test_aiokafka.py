"""aiokafka (asyncio client) against the broker under test: small produce + group consume."""

from __future__ import annotations

import asyncio

from conftest import require_module, unique


def test_aiokafka_produce_consume(bootstrap):
    aiokafka = require_module("aiokafka")
    topic, group = unique("aio"), unique("gaio")
    n = 20

    async def main():
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                             request_timeout_ms=15000)
        await producer.start()
        try:
            # first send auto-creates the topic (Metadata with allow_auto_topic_creation)
            for i in range(n):
                await producer.send_and_wait(topic, value=f"aio-{i}".encode(), key=b"k",
                                             headers=[("i", str(i).encode())])
        finally:
            await producer.stop()

        consumer = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                             auto_offset_reset="earliest",
                                             enable_auto_commit=False,
                                             session_timeout_ms=10000, heartbeat_interval_ms=500,
                                             request_timeout_ms=15000)
        await consumer.start()
        got = []
        try:
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    got.extend(msgs)
            await consumer.commit()
            tp = aiokafka.TopicPartition(topic, 0)
            assert await consumer.committed(tp) == n
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert [m.value for m in got] == [f"aio-{i}".encode() for i in range(n)]
    assert [m.offset for m in got] == list(range(n))
    assert all(m.key == b"k" for m in got)
    assert [list(m.headers) for m in got] == [[("i", str(i).encode())] for i in range(n)]
