"""The transaction coordinator on a 3-node cluster: `__transaction_state`
replicated (RF 3, min ISR 2), a transactional id answered only by the node
leading its partition (NOT_COORDINATOR elsewhere), and after kill -9 of that
node the new leader loads the partition from its replica and carries the
producer epoch on (raw InitProducerId v1, which shows id and epoch)."""

from __future__ import annotations

import struct
import time

import pytest

from cluster_harness import wait_until
from kafki_harness import connect, frame, header_v1, kstr, recv_response
from test_cluster import FAST

NOT_COORDINATOR = 16
# Retried: LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, CONCURRENT_TRANSACTIONS,
# and connection trouble while a node dies.
RETRIABLE = {14, 15, 51}


def init_producer_id(port: int, transactional_id: str) -> tuple[int, int, int]:
    """(error, producer id, epoch) of one raw InitProducerId v1."""
    sock = connect(port)
    try:
        body = kstr(transactional_id) + struct.pack(">i", 60000)
        sock.sendall(frame(header_v1(22, 1, 7) + body))
        payload = recv_response(sock)
    finally:
        sock.close()
    _, _, error, producer_id, epoch = struct.unpack(">iihqh", payload[:20])
    return error, producer_id, epoch


def init_on_coordinator(nodes, transactional_id: str, timeout: float = 60.0):
    """Asks every live node until the coordinator answers: (node, producer id, epoch).
    Every other node must say NOT_COORDINATOR."""
    deadline = time.monotonic() + timeout
    while True:
        for node in nodes:
            try:
                error, producer_id, epoch = init_producer_id(node.port, transactional_id)
            except OSError:
                continue
            if error == 0:
                return node, producer_id, epoch
            assert error in RETRIABLE | {NOT_COORDINATOR}, f"node {node.id}: error {error}"
        assert time.monotonic() < deadline, "no coordinator answered"
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_the_new_coordinator_carries_the_epoch_on_after_a_kill(cluster_factory):
    c = cluster_factory(3, settings={**FAST, "replica.lag.time.max.ms": "3000"})
    transactional_id = "failover-tx"
    coordinator, producer_id, epoch = init_on_coordinator(list(c), transactional_id)
    assert epoch == 0
    again = init_on_coordinator(list(c), transactional_id)
    assert again == (coordinator, producer_id, 1)
    others = [node for node in c if node is not coordinator]
    for node in others:
        assert init_producer_id(node.port, transactional_id)[0] == NOT_COORDINATOR

    coordinator.kill9()
    wait_until(lambda: all(node.live() for node in others), 30, what="the others serve")
    successor, carried_id, carried_epoch = init_on_coordinator(others, transactional_id, 90)
    assert successor is not coordinator
    assert (carried_id, carried_epoch) == (producer_id, 2)
