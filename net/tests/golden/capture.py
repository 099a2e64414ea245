#!/usr/bin/env python3
"""Capture the first request frames real Kafka clients send, as hex, for kafki-net's golden tests.

A tiny TCP server on 127.0.0.1 records each length-prefixed frame a client sends. To the first
ApiVersions request it answers what Kafka answers to a version it does not know: an ApiVersions
v0 response with error UNSUPPORTED_VERSION (35) advertising ApiVersions 0..2, so the client's
retry (a second ApiVersions frame) is captured too. Then it closes the connection.

Usage: python3 capture.py [output_dir]     (writes <client>_<n>.hex, one frame per file,
                                            4-byte length prefix included, plus versions.txt)
"""
import os
import socket
import struct
import sys
import threading
import time

OUT_DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
FRAMES_PER_CLIENT = 2


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def unsupported_version_reply(correlation_id):
    # ApiVersionsResponse v0: error_code, [api_key, min, max]; header v0: correlation id.
    body = struct.pack(">hi", 35, 1) + struct.pack(">hhh", 18, 0, 2)
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


def serve(listener, frames):
    listener.settimeout(15)
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        return
    conn.settimeout(10)
    try:
        while len(frames) < FRAMES_PER_CLIENT:
            prefix = read_exact(conn, 4)
            if prefix is None:
                # Client closed (e.g. after our error reply); take its next connection.
                conn.close()
                conn, _ = listener.accept()
                conn.settimeout(10)
                continue
            (length,) = struct.unpack(">i", prefix)
            payload = read_exact(conn, length)
            if payload is None:
                break
            frames.append(prefix + payload)
            api_key, api_version, correlation_id = struct.unpack(">hhi", payload[:8])
            if api_key == 18 and len(frames) == 1:
                conn.sendall(unsupported_version_reply(correlation_id))
    except (socket.timeout, OSError):
        pass
    finally:
        conn.close()


def capture(name, run_client):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    frames = []
    server = threading.Thread(target=serve, args=(listener, frames))
    server.start()
    client = threading.Thread(target=run_client, args=(f"127.0.0.1:{port}",), daemon=True)
    client.start()
    server.join()
    listener.close()
    for index, frame in enumerate(frames):
        path = os.path.join(OUT_DIR, f"{name}_{index}.hex")
        with open(path, "w") as f:
            f.write(frame.hex() + "\n")
        api_key, api_version = struct.unpack(">hh", frame[4:8])
        print(f"{path}: api_key={api_key} api_version={api_version} bytes={len(frame)}")
    return frames


def confluent(bootstrap):
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": "kafki-golden-confluent"})
    try:
        admin.list_topics(timeout=8)
    except Exception:
        pass


def kafka_python(bootstrap):
    from kafka import KafkaAdminClient

    try:
        KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="kafki-golden-kafka-python",
            request_timeout_ms=5000,
        )
    except Exception:
        pass


if __name__ == "__main__":
    import confluent_kafka
    import kafka

    capture("confluent_kafka", confluent)
    capture("kafka_python", kafka_python)
    with open(os.path.join(OUT_DIR, "versions.txt"), "w") as f:
        f.write(
            f"confluent-kafka {confluent_kafka.version()} "
            f"(librdkafka {confluent_kafka.libversion()[0]})\n"
            f"kafka-python {kafka.__version__}\n"
            f"python {sys.version.split()[0]}\n"
            f"captured {time.strftime('%Y-%m-%d', time.gmtime())}\n"
        )
