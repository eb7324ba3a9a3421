"""Ports: a second control plane cannot share the xDS port, and the demo's check of its ports
tells a port in use from connections of an earlier run lingering in TIME-WAIT."""

from __future__ import annotations

import socket

import pytest

from xds_server.ads.server import AdsServer
from xds_server.local.demo import port_free

pytestmark = pytest.mark.unit


async def test_a_second_server_on_the_same_xds_port_refuses_to_start() -> None:
    first = AdsServer()
    port = await first.start("127.0.0.1:0")
    try:
        with pytest.raises(OSError, match=rf"--xds-address 127.0.0.1:{port}: cannot listen there"):
            await AdsServer().start(f"127.0.0.1:{port}")
    finally:
        await first.stop(grace=0)


def test_a_listening_port_is_taken_and_one_left_in_time_wait_is_free() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    try:
        assert not port_free(port)  # listening
        accepted.close()  # the server side closes first: its end stays in TIME-WAIT
        client.recv(1)
        client.close()
        listener.close()
        # What the check did before: refused by the TIME-WAIT end alone.
        with socket.socket() as plain, pytest.raises(OSError, match="in use"):
            plain.bind(("127.0.0.1", port))
        assert port_free(port)
    finally:
        for sock in (client, accepted, listener):
            sock.close()
