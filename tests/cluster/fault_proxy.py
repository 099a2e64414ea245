"""A fault-injecting TCP proxy for node-to-node links (tests/cluster).

`FaultProxy(listen_port, target_host, target_port)` accepts connections on
127.0.0.1:listen_port (0: any free port, see `.port` after `start()`) and opens
one connection to the target for each. Pure stdlib: an asyncio loop in a
background thread, so the controls work from a test while connections are live.
Nothing needs root.

Directions: "forward" is what the connecting side sends (towards the target),
"backward" what the target sends back.

What each control models (a cut link under TCP, at the proxy's granularity):

- `block()` / `block_one_way(d)` / `set_blocked(...)`: bytes of a blocked
  direction are *held*, in order, and connections stay open. The proxy keeps
  reading the source into a per-connection buffer of at most HOLD_LIMIT bytes
  (then stops reading, so the sender's writes block as on a dead link); an EOF
  or reset from the source queues behind the held bytes. `unblock()` delivers
  what was held, as TCP retransmission would after a short cut;
  `unblock(reset=True)` resets every connection instead (a cut long enough for
  TCP to give up). A connection accepted while "forward" is blocked does not
  reach the target (no upstream connection, like a SYN that cannot get through)
  until forward is unblocked; if the client closes it meanwhile, the target
  never sees it. The handshake is not modelled further: a connection accepted
  while only "backward" is blocked is opened to the target at once.
- `drop_connections()`: resets (RST) both sides of every current connection.
  New connections work normally.
- `set_delay(seconds)`: every chunk is forwarded `seconds` after it was read,
  both directions, order kept; pure latency, no throughput cap.

If the target refuses the upstream connection (node down), the client side is
reset, as a refused connect would be.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
import threading
import time

FORWARD = "forward"
BACKWARD = "backward"
DIRECTIONS = (FORWARD, BACKWARD)

CHUNK_BYTES = 64 * 1024
# Held (blocked or delayed) bytes per connection and direction before the proxy
# stops reading that source.
HOLD_LIMIT = 16 << 20
CONNECT_TIMEOUT_S = 5.0
CONTROL_TIMEOUT_S = 10.0

_EOF = "eof"
_RESET = "reset"


def _reset(writer: asyncio.StreamWriter | None):
    """Close a stream with an RST (SO_LINGER 0), not a FIN."""
    if writer is None or writer.transport.is_closing():
        return
    try:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class _Pipe:
    """One direction of one connection: chunks read and not yet written."""

    def __init__(self):
        self.items: collections.deque = collections.deque()  # (due, bytes | _EOF | _RESET)
        self.held_bytes = 0
        self.changed = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()


class _Conn:
    def __init__(self, conn_id: int, client_writer: asyncio.StreamWriter):
        self.id = conn_id
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.pipes = {FORWARD: _Pipe(), BACKWARD: _Pipe()}
        self.tasks: set[asyncio.Task] = set()
        self.supervisor: asyncio.Task | None = None
        self.killed = False

    def kill(self):
        """Reset both sides and stop every task of this connection."""
        self.killed = True
        _reset(self.client_writer)
        _reset(self.upstream_writer)
        current = asyncio.current_task()
        for t in [*self.tasks, self.supervisor]:
            if t is not None and t is not current:
                t.cancel()


class FaultProxy:
    """TCP proxy 127.0.0.1:listen_port -> target_host:target_port with fault controls.

    Controls may be called before `start()` (they take effect when it starts)
    and from any thread while it runs; each returns once the proxy applies it.
    """

    def __init__(self, listen_port: int, target_host: str, target_port: int,
                 listen_host: str = "127.0.0.1", name: str | None = None):
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.name = name or f"{listen_port}->{target_host}:{target_port}"
        self._blocked = {FORWARD: False, BACKWARD: False}
        self._delay_s = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._open: dict[str, asyncio.Event] = {}
        self._conns: set[_Conn] = set()
        self._next_id = 0
        # Counters (read from any thread).
        self.accepted = 0
        self.upstream_failures = 0
        self.bytes = {FORWARD: 0, BACKWARD: 0}
        self.events: collections.deque = collections.deque(maxlen=1000)

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return (f"FaultProxy({self.name}, {self.listen_host}:{self.listen_port} -> "
                f"{self.target_host}:{self.target_port}, {state}, blocked={self._blocked}, "
                f"delay={self._delay_s}s, connections={len(self._conns)})")

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "FaultProxy":
        assert not self.running, f"{self.name} already running"
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,),
                                  name=f"fault-proxy {self.name}", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_server(), loop).result(CONTROL_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise
        self._event(f"listening on {self.address}")
        return self

    def stop(self):
        """Close the listener, reset every connection, end the loop thread. Idempotent."""
        if not self.running:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(CONTROL_TIMEOUT_S)
        finally:
            self._stop_loop()
        self._event("stopped")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ controls

    def block(self):
        """Hold bytes both ways; connections stay open."""
        self.set_blocked(forward=True, backward=True)

    def unblock(self, reset: bool = False):
        """Open both ways; held bytes are delivered, or with reset=True every
        current connection is reset first (held bytes lost)."""
        if reset:
            self.drop_connections()
        self.set_blocked(forward=False, backward=False)

    def block_one_way(self, direction: str):
        """Hold bytes of `direction` ("forward" | "backward") only; the other way is open."""
        assert direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}: {direction!r}"
        self.set_blocked(**{d: d == direction for d in DIRECTIONS})

    def set_blocked(self, forward: bool | None = None, backward: bool | None = None):
        """Set each direction blocked (True), open (False) or unchanged (None)."""
        with self._lock:
            if forward is not None:
                self._blocked[FORWARD] = bool(forward)
            if backward is not None:
                self._blocked[BACKWARD] = bool(backward)
            self._event(f"blocked={dict(self._blocked)}")
            self._control(self._apply_blocked)

    def blocked(self, direction: str) -> bool:
        return self._blocked[direction]

    def set_delay(self, seconds: float):
        """Forward every chunk read from now on `seconds` later (both directions)."""
        assert seconds >= 0, seconds
        self._delay_s = float(seconds)
        self._event(f"delay={seconds}s")

    @property
    def delay(self) -> float:
        return self._delay_s

    def drop_connections(self) -> int:
        """Reset both sides of every current connection; returns how many."""
        if not self.running:
            return 0
        n = asyncio.run_coroutine_threadsafe(self._drop_all(), self._loop).result(CONTROL_TIMEOUT_S)
        self._event(f"dropped {n} connections")
        return n

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def stats(self) -> dict:
        return {"accepted": self.accepted, "active": len(self._conns),
                "upstream_failures": self.upstream_failures,
                "bytes_forward": self.bytes[FORWARD], "bytes_backward": self.bytes[BACKWARD],
                "blocked": dict(self._blocked), "delay_s": self._delay_s}

    # ------------------------------------------------------------------ loop side

    def _event(self, what: str):
        self.events.append((time.time(), what))

    def _control(self, fn):
        """Run fn() on the loop thread and wait for it (or just return if stopped)."""
        if not self.running:
            return

        async def call():
            fn()

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(CONTROL_TIMEOUT_S)

    def _run_loop(self, loop: asyncio.AbstractEventLoop):
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    def _stop_loop(self):
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CONTROL_TIMEOUT_S)
        self._server = None

    def _apply_blocked(self):
        for d in DIRECTIONS:
            if self._blocked[d]:
                self._open[d].clear()
            else:
                self._open[d].set()

    async def _start_server(self):
        self._open = {d: asyncio.Event() for d in DIRECTIONS}
        self._apply_blocked()
        self._server = await asyncio.start_server(
            self._serve, self.listen_host, self.listen_port, reuse_address=True, backlog=512)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self):
        if self._server is not None:
            self._server.close()
        await self._drop_all()

    async def _drop_all(self) -> int:
        conns = list(self._conns)
        for c in conns:
            c.kill()
        supervisors = [c.supervisor for c in conns if c.supervisor is not None]
        if supervisors:
            await asyncio.wait(supervisors, timeout=CONTROL_TIMEOUT_S / 2)
        await asyncio.sleep(0)  # let the transports' close callbacks run
        return len(conns)

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter):
        self._next_id += 1
        conn = _Conn(self._next_id, client_writer)
        conn.supervisor = asyncio.current_task()
        self._conns.add(conn)
        self.accepted += 1
        try:
            await self._run_conn(conn, client_reader)
        except asyncio.CancelledError:
            pass
        finally:
            if any(not t.done() for t in conn.tasks):
                conn.kill()
            for w in (conn.client_writer, conn.upstream_writer):
                if w is not None and not w.transport.is_closing():
                    w.close()
            self._conns.discard(conn)

    def _task(self, conn: _Conn, coro) -> asyncio.Task:
        t = asyncio.ensure_future(coro)
        conn.tasks.add(t)
        return t

    async def _run_conn(self, conn: _Conn, client_reader: asyncio.StreamReader):
        forward_reader = self._task(conn, self._read(conn, client_reader, FORWARD))
        # No upstream connection while forward is blocked ("the SYN cannot get through").
        if not self._open[FORWARD].is_set():
            opened = asyncio.ensure_future(self._open[FORWARD].wait())
            await asyncio.wait({opened, forward_reader}, return_when=asyncio.FIRST_COMPLETED)
            if not opened.done():
                opened.cancel()
                self._event(f"conn {conn.id}: client left before the link opened")
                return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as e:
            self.upstream_failures += 1
            self._event(f"conn {conn.id}: upstream connect failed: {e!r}")
            _reset(conn.client_writer)
            return
        conn.upstream_writer = upstream_writer
        if conn.killed:  # dropped while connecting
            _reset(upstream_writer)
            return
        self._task(conn, self._write(conn, FORWARD, upstream_writer))
        self._task(conn, self._read(conn, upstream_reader, BACKWARD))
        self._task(conn, self._write(conn, BACKWARD, conn.client_writer))
        await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _read(self, conn: _Conn, reader: asyncio.StreamReader, direction: str):
        pipe = conn.pipes[direction]
        while True:
            while pipe.held_bytes >= HOLD_LIMIT:
                pipe.drained.clear()
                await pipe.drained.wait()
            try:
                data = await reader.read(CHUNK_BYTES)
            except (ConnectionError, OSError):
                item = _RESET
            else:
                item = data if data else _EOF
            pipe.items.append((time.monotonic() + self._delay_s, item))
            if isinstance(item, bytes):
                pipe.held_bytes += len(item)
            pipe.changed.set()
            if not isinstance(item, bytes):
                return

    async def _write(self, conn: _Conn, direction: str, writer: asyncio.StreamWriter):
        pipe = conn.pipes[direction]
        opened = self._open[direction]
        while True:
            if not pipe.items:
                pipe.changed.clear()
                await pipe.changed.wait()
                continue
            due, item = pipe.items[0]
            wait_s = due - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
                continue
            if not opened.is_set():
                await opened.wait()
                continue
            # No await between the check above and the write: a block() that
            # returned before this point stops this chunk.
            pipe.items.popleft()
            if item == _EOF:
                if writer.can_write_eof() and not writer.transport.is_closing():
                    try:
                        writer.write_eof()
                    except OSError:
                        pass
                return
            if item == _RESET:
                self._event(f"conn {conn.id}: reset ({direction} source)")
                conn.kill()
                return
            pipe.held_bytes -= len(item)
            if pipe.held_bytes < HOLD_LIMIT:
                pipe.drained.set()
            try:
                writer.write(item)
                await writer.drain()
            except (ConnectionError, OSError):
                self._event(f"conn {conn.id}: {direction} write failed, reset")
                conn.kill()
                return
            self.bytes[direction] += len(item)
