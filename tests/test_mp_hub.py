"""The driver's hub: only clients with the run's key get through; connections keep alive."""

from __future__ import annotations

import os
import socket
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest

from parsl_poncho.multiprocessing.hub import KEEPALIVE, Hub


@pytest.fixture
def hub():
    hub = Hub("127.0.0.1")
    yield hub
    hub.close()


def test_a_client_without_the_key_is_refused_and_one_with_it_is_served(hub):
    seen: list = []
    served = threading.Event()

    def handler(hello, conn):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        seen.append((hello, sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)))
        sock.close()
        conn.send("hello back")
        served.set()

    hub.on("test", handler)
    with pytest.raises(AuthenticationError, match=r"digest sent was rejected"):
        Client(("127.0.0.1", hub.address[1]), authkey=os.urandom(32))
    conn = hub.remote.connect(("test", 1))
    assert conn.recv() == "hello back" and served.wait(5)
    assert seen == [(("test", 1), 1, KEEPALIVE[0])]
    conn.close()


def test_an_unknown_or_failing_client_is_closed_not_left_waiting(hub):
    def broken(hello, conn):
        raise RuntimeError("handler bug")

    hub.on("broken", broken)
    for hello in (("nobody",), ("broken",)):
        conn = hub.remote.connect(hello)
        assert conn.poll(10)
        with pytest.raises(EOFError):
            conn.recv()
        conn.close()


def test_a_silent_client_neither_stalls_the_others_nor_stays_connected(hub, monkeypatch):
    from parsl_poncho.multiprocessing import hub as hub_module

    monkeypatch.setattr(hub_module, "HANDSHAKE_TIMEOUT", 1.0)
    hub.on("test", lambda hello, conn: conn.send("served"))
    silent = socket.create_connection(("127.0.0.1", hub.address[1]))
    try:
        # Before, the accept thread ran the handshake itself and waited on the silent one.
        served: list = []
        client = threading.Thread(target=lambda: served.append(
            hub.remote.connect(("test",)).recv()), daemon=True)
        client.start()
        client.join(5)
        assert served == ["served"]
        silent.settimeout(10)
        challenge = silent.recv(4096)  # the hub's challenge, then it hangs up on us
        assert challenge
        assert silent.recv(4096) == b""
    finally:
        silent.close()


def test_clients_beyond_the_handshake_limit_are_dropped_at_once(monkeypatch):
    from parsl_poncho.multiprocessing import hub as hub_module

    monkeypatch.setattr(hub_module, "HANDSHAKE_TIMEOUT", 1.0)
    monkeypatch.setattr(hub_module, "MAX_HANDSHAKES", 2)
    hub = Hub("127.0.0.1")
    hub.on("test", lambda hello, conn: conn.send("served"))
    silent = [socket.create_connection(("127.0.0.1", hub.address[1])) for _ in range(2)]
    try:
        for sock in silent:  # both are mid-handshake: each got its challenge
            sock.settimeout(10)
            assert sock.recv(4096)
        extra = socket.create_connection(("127.0.0.1", hub.address[1]))
        extra.settimeout(10)
        assert extra.recv(4096) == b""  # closed without a challenge
        extra.close()
        for sock in silent:  # dropped after HANDSHAKE_TIMEOUT
            assert sock.recv(4096) == b""
        time.sleep(0.2)  # the hub frees a place just after it closes the socket
        # their places are free again: a client with the key is served
        assert hub.remote.connect(("test",)).recv() == "served"
    finally:
        for sock in silent:
            sock.close()
        hub.close()
