"""The fault proxy itself (fault_proxy.py), against a local echo server: every
control is checked from both ends (what the server received, what came back)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(60)

QUIET_S = 0.5      # "nothing arrives within": how long a negative check waits
ARRIVE_S = 10.0    # how long a positive check may wait on a loaded machine


class EchoServer:
    """Threaded TCP echo server on a free loopback port that records what it got."""

    def __init__(self, port: int = 0):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.received = bytearray()
        self.ends: list[str] = []      # per connection: "eof" | "reset"
        self.lock = threading.Lock()
        self.stopping = False
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping:
            try:
                s, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.conns.append(s)
            threading.Thread(target=self._echo, args=(s,), daemon=True).start()

    def _echo(self, s: socket.socket):
        s.settimeout(30)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    end = "eof"
                    break
                with self.lock:
                    self.received += data
                s.sendall(data)
        except ConnectionResetError:
            end = "reset"
        except OSError as e:
            end = f"error {e!r}"
        with self.lock:
            self.ends.append(end)
        s.close()

    def got(self, data: bytes) -> bool:
        with self.lock:
            return data in self.received

    def stop(self):
        self.stopping = True
        self.listener.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass
        self.thread.join(5)


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo):
    p = FaultProxy(0, "127.0.0.1", echo.port, name="test").start()
    yield p
    p.stop()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=ARRIVE_S)
    s.settimeout(ARRIVE_S)
    return s


def recv_n(s: socket.socket, n: int, timeout: float = ARRIVE_S) -> bytes:
    s.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def nothing_within(s: socket.socket, seconds: float = QUIET_S) -> bool:
    """True when no byte (and no close) arrives on `s` within `seconds`."""
    s.settimeout(seconds)
    try:
        s.recv(1, socket.MSG_PEEK)
    except socket.timeout:
        return True
    return False


def wait_for(pred, timeout: float = ARRIVE_S, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with connect(port) as s:
        s.sendall(payload)
        return recv_n(s, len(payload))


# ---------------------------------------------------------------------------- tests


def test_passes_bytes_both_ways_intact(proxy, echo):
    payload = bytes(range(256)) * 16384          # 4 MiB, several chunks
    with connect(proxy.port) as a, connect(proxy.port) as b:
        sender = threading.Thread(target=a.sendall, args=(payload,))
        sender.start()
        assert recv_n(a, len(payload)) == payload
        sender.join()
        b.sendall(b"second connection")
        assert recv_n(b, 17) == b"second connection"
    assert proxy.accepted == 2
    wait_for(lambda: proxy.bytes == {"forward": len(payload) + 17, "backward": len(payload) + 17},
             what=f"byte counters ({proxy.bytes})")


def test_block_holds_bytes_until_unblock_then_new_connections_flow(proxy, echo):
    with connect(proxy.port) as old:
        old.sendall(b"before")
        assert recv_n(old, 6) == b"before"

        proxy.block()
        old.sendall(b"held")
        assert nothing_within(old), "echo came back through a blocked link"
        assert not echo.got(b"held"), "the server got bytes through a blocked link"
        # A new connection during the block never reaches the server.
        new = connect(proxy.port)
        new.sendall(b"new-during-block")
        assert nothing_within(new)
        assert echo.accepted == 1, "a connection reached the server through a blocked link"

        proxy.unblock()
        # The held bytes arrive, in order, on both connections.
        assert recv_n(old, 4) == b"held"
        assert recv_n(new, 16) == b"new-during-block"
        new.close()
    assert roundtrip(proxy.port, b"after") == b"after"
    assert echo.accepted == 3


def test_client_gone_during_block_never_reaches_server(proxy, echo):
    proxy.block()
    s = connect(proxy.port)
    s.sendall(b"stale request")
    s.close()
    time.sleep(0.2)
    proxy.unblock()
    assert roundtrip(proxy.port) == b"ping"
    assert echo.accepted == 1
    assert not echo.got(b"stale request")


def test_block_one_way_backward_request_arrives_reply_held(proxy, echo):
    with connect(proxy.port) as s:
        proxy.block_one_way("backward")
        assert proxy.blocked("backward") and not proxy.blocked("forward")
        s.sendall(b"request")
        wait_for(lambda: echo.got(b"request"), what="request at the server")
        assert nothing_within(s), "the reply came back through a blocked backward link"
        # A connection made during the backward block reaches the server too.
        with connect(proxy.port) as s2:
            s2.sendall(b"request-2")
            wait_for(lambda: echo.got(b"request-2"), what="second request at the server")
            assert nothing_within(s2)
            proxy.unblock()
            assert recv_n(s2, 9) == b"request-2"
        assert recv_n(s, 7) == b"request"


def test_block_one_way_forward_request_held(proxy, echo):
    with connect(proxy.port) as s:
        s.sendall(b"a")
        assert recv_n(s, 1) == b"a"
        proxy.block_one_way("forward")
        s.sendall(b"request")
        assert nothing_within(s)
        assert not echo.got(b"request"), "request crossed a blocked forward link"
        proxy.unblock()
        assert recv_n(s, 7) == b"request"


def test_drop_connections_resets_both_sides(proxy, echo):
    s = connect(proxy.port)
    s.sendall(b"x")
    assert recv_n(s, 1) == b"x"
    assert proxy.active_connections == 1
    assert proxy.drop_connections() == 1
    with pytest.raises(ConnectionResetError):
        s.settimeout(ARRIVE_S)
        s.recv(1)
    s.close()
    wait_for(lambda: echo.ends == ["reset"], what=f"server side reset (ends={echo.ends})")
    assert proxy.active_connections == 0
    assert roundtrip(proxy.port, b"again") == b"again"


def test_unblock_with_reset_drops_held_bytes(proxy, echo):
    s = connect(proxy.port)
    proxy.block()
    s.sendall(b"never")
    assert nothing_within(s, 0.2)
    proxy.unblock(reset=True)
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    s.close()
    assert not echo.got(b"never")
    assert roundtrip(proxy.port) == b"ping"


def test_delay_is_latency_each_way_without_throughput_cap(proxy, echo):
    delay = 0.3
    with connect(proxy.port) as s:
        s.sendall(b"warm")
        recv_n(s, 4)
        proxy.set_delay(delay)
        t0 = time.monotonic()
        s.sendall(b"one")
        wait_for(lambda: echo.got(b"one"), what="delayed request")
        one_way = time.monotonic() - t0
        assert recv_n(s, 3) == b"one"
        rtt = time.monotonic() - t0
        assert one_way >= delay, f"request arrived after {one_way:.3f}s < {delay}s"
        assert rtt >= 2 * delay, f"round trip {rtt:.3f}s < {2 * delay}s"

        # 20 chunks sent back to back: all come back about 2*delay later, not 20*2*delay.
        t0 = time.monotonic()
        for i in range(20):
            s.sendall(b"%02d" % i)
            time.sleep(0.01)
        assert recv_n(s, 40) == b"".join(b"%02d" % i for i in range(20))
        burst = time.monotonic() - t0
        assert 2 * delay <= burst < 10 * delay, f"20 delayed chunks took {burst:.3f}s"

        proxy.set_delay(0)
        t0 = time.monotonic()
        s.sendall(b"fast")
        assert recv_n(s, 4) == b"fast"
        assert time.monotonic() - t0 < delay, "delay still applied after set_delay(0)"


def test_target_down_resets_client_then_recovers(echo):
    port = echo.port
    echo.stop()
    p = FaultProxy(0, "127.0.0.1", port).start()
    try:
        with connect(p.port) as s:
            s.settimeout(ARRIVE_S)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                s.sendall(b"x")
                s.recv(1)
        assert p.upstream_failures == 1
        server = EchoServer(port)
        try:
            assert roundtrip(p.port) == b"ping"
        finally:
            server.stop()
    finally:
        p.stop()


def test_half_close_is_forwarded(proxy, echo):
    with connect(proxy.port) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_n(s, 10) == b"last words"
        assert s.recv(1) == b""          # the server closed after our EOF
    wait_for(lambda: echo.ends == ["eof"], what="EOF at the server")


def test_stop_closes_listener_and_connections_and_restarts_on_same_port(echo):
    p = FaultProxy(0, "127.0.0.1", echo.port).start()
    port = p.port
    s = connect(port)
    s.sendall(b"x")
    assert recv_n(s, 1) == b"x"
    p.block()
    p.stop()
    assert not p.running
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # Restarted: same port, and the block set before stop() still holds.
    p.start()
    try:
        assert p.port == port and p.blocked("forward") and p.blocked("backward")
        with connect(port) as s:
            s.sendall(b"y")
            assert nothing_within(s)
            p.unblock()
            assert recv_n(s, 1) == b"y"
    finally:
        p.stop()


def test_controls_before_start_apply_at_start(echo):
    p = FaultProxy(0, "127.0.0.1", echo.port)
    p.block_one_way("forward")
    p.set_delay(0.05)
    p.start()
    try:
        with connect(p.port) as s:
            s.sendall(b"z")
            assert nothing_within(s, 0.3)
            assert echo.accepted == 0
            p.unblock()
            assert recv_n(s, 1) == b"z"
    finally:
        p.stop()


def test_many_connections_and_drop_under_traffic(proxy, echo):
    socks = [connect(proxy.port) for _ in range(50)]
    for i, s in enumerate(socks):
        s.sendall(b"%03d" % i)
    for i, s in enumerate(socks):
        assert recv_n(s, 3) == b"%03d" % i
    wait_for(lambda: proxy.active_connections == 50, what="50 active connections")
    assert proxy.drop_connections() == 50
    for s in socks:
        with pytest.raises(ConnectionResetError):
            s.recv(1)
        s.close()
    wait_for(lambda: proxy.active_connections == 0, what="no connection left")
    assert roundtrip(proxy.port) == b"ping"
