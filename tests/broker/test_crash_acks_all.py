"""SIGKILL during an acks=all produce loop loses no acknowledged message.

Each round: a confluent-kafka producer (acks=all, no idempotence, small linger)
writes numbered messages round-robin to a 3-partition topic and records every
message whose delivery report succeeded, with the offset the broker returned.
After a random 0.5-2 s (fixed seed) from the first acknowledgement the broker is SIGKILLed mid-stream and
restarted on the same data dir. Then every partition is read from the start and
checked: the record at each acknowledged offset is exactly the acknowledged
message (key and value byte-identical), so nothing acknowledged is lost,
changed or reordered; every record read is one some round produced (duplicates
of unacknowledged messages are allowed). Rounds accumulate on one data dir.
"""

from __future__ import annotations

import random
import time

import pytest

from kafki_harness import consume_partition, create_topic

ROUNDS = 5
PARTITIONS = 3
SEED = 20261124


def produce_until_kill(broker, topic: str, round_no: int, run_seconds: float, rng: random.Random):
    """Produce in a loop; SIGKILL the broker after run_seconds. Returns
    (acked {(partition, offset): (key, value)}, produced {value: key}, stats)."""
    from confluent_kafka import KafkaError, Producer

    acked: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    failed = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                  "enable.idempotence": False, "linger.ms": 2, "batch.num.messages": 200,
                  "message.timeout.ms": 5000, "socket.timeout.ms": 5000,
                  "retries": 2, "retry.backoff.ms": 50, "queue.buffering.max.messages": 20000})

    def on_delivery(err, msg):
        if err is None:
            acked[(msg.partition(), msg.offset())] = (msg.key(), msg.value())
        else:
            failed.append(err.code())

    produced: dict[bytes, bytes] = {}
    start = time.monotonic()
    i = 0
    killed = False
    first_ack = None
    while True:
        now = time.monotonic()
        # The kill timer starts at the first acknowledgement (connection set-up of a
        # debug build on a loaded 2-core box can take a while); none in 15 s is a failure.
        if first_ack is None:
            if acked:
                first_ack = now
            elif now - start > 15:
                raise AssertionError(f"round {round_no}: no acknowledgement within 15 s of starting "
                                     f"to produce; failures {failed[:5]}\n{broker.log_text()[-2000:]}")
        if not killed and first_ack is not None and now - first_ack >= run_seconds:
            broker.kill9()
            killed = True
            kill_at = now
        if killed and now - kill_at > 0.3:
            break
        key = f"r{round_no}-k{i}".encode()
        value = f"r{round_no}-m{i}-".encode() + rng.randbytes(rng.randint(0, 300)).hex().encode()
        try:
            p.produce(topic, value=value, key=key, partition=i % PARTITIONS, on_delivery=on_delivery)
            produced[value] = key
            i += 1
        except BufferError:
            p.poll(0.05)
            continue
        p.poll(0)
    # Whatever is still queued or in flight was never acknowledged: purge it.
    p.poll(0.2)
    p.purge(in_queue=True, in_flight=True)
    remaining = p.flush(10)
    assert remaining == 0, f"producer did not drain after purge: {remaining} left"
    not_purged = [c for c in failed if c not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)]
    return acked, produced, {"sent": i, "acked": len(acked), "failed": len(failed),
                             "failed_other": sorted(set(not_purged))}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("segments,rounds", [("default", ROUNDS), ("1MiB", 3)])
def test_sigkill_under_acks_all_loses_no_acknowledged_message(broker_factory, segments, rounds):
    """`1MiB` rolls segments every MiB, so kills also land around segment rolls and
    recovery runs over many segments per partition."""
    broker = broker_factory({} if segments == "default" else {"log.segment.bytes": str(1 << 20)})
    rng = random.Random(SEED)
    topic = "crash-acks-all"
    create_topic(broker.bootstrap, topic, PARTITIONS)

    all_acked: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    all_produced: dict[bytes, bytes] = {}
    history = []
    for round_no in range(rounds):
        run_seconds = rng.uniform(0.5, 2.0)
        acked, produced, stats = produce_until_kill(broker, topic, round_no, run_seconds, rng)
        history.append((round_no, round(run_seconds, 2), stats))
        assert stats["acked"] > 0, f"round {round_no}: nothing acknowledged in {run_seconds:.2f}s: {stats}"
        clash = {k: (all_acked[k], v) for k, v in acked.items() if k in all_acked and all_acked[k] != v}
        assert not clash, (f"round {round_no}: the broker acknowledged an offset that an earlier "
                           f"round's acknowledged message already holds: {list(clash.items())[:3]}")
        all_acked.update(acked)
        all_produced.update(produced)

        broker.start(timeout=30)

        for part in range(PARTITIONS):
            want = {off: kv for (pp, off), kv in all_acked.items() if pp == part}
            top = max(want) if want else -1
            records, errors = consume_partition(broker.bootstrap, topic, part, 0,
                                                idle_timeout=8, total_timeout=40)
            got = {off: (k, v) for off, k, v in records}
            missing = sorted(off for off in want if off not in got)
            changed = [(off, want[off], got[off]) for off in sorted(want)
                       if off in got and got[off] != want[off]]
            strangers = [(off, k, v[:60]) for off, k, v in records if all_produced.get(v) != k]
            offsets = [off for off, _, _ in records]
            assert not missing, (
                f"round {round_no} partition {part}: {len(missing)} acknowledged messages missing "
                f"after restart (first offsets {missing[:10]}, acked up to {top}, read "
                f"{len(records)} records up to {offsets[-1] if offsets else None}, errors {errors[:3]}); "
                f"history {history}\nlog tail:\n{broker.log_text()[-2500:]}")
            assert not changed, (f"round {round_no} partition {part}: acknowledged offsets hold other "
                                 f"data: {changed[:3]}")
            assert not strangers, (f"round {round_no} partition {part}: records nobody produced: "
                                   f"{strangers[:3]}")
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), \
                f"round {round_no} partition {part}: offsets out of order or repeated"
    segs = {p: len(list(broker.partition_dir(topic, p).glob("*.log"))) for p in range(PARTITIONS)}
    print(f"\ncrash rounds: {history}; acknowledged in total {len(all_acked)}; segments {segs}")
