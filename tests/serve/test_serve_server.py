"""`serve`'s listening sockets: taken before the model loads, one per address of the host, a busy port refused."""

from __future__ import annotations

import socket

import pytest

from deployft.errors import UsageError
from deployft.serve.server import address_text, listen


def _close(sockets):
    for sock in sockets:
        sock.close()


def test_a_port_is_listened_on_at_once_so_a_second_server_finds_it_taken():
    first = listen("127.0.0.1", 0)
    try:
        port = first[0].getsockname()[1]
        assert address_text(first[0]) == f"http://127.0.0.1:{port}"
        with pytest.raises(UsageError) as caught:  # not only bound: a bound socket alone would let this one bind too
            _close(listen("127.0.0.1", port))
        assert str(caught.value) == (f"--port {port} on 127.0.0.1 is in use (another program listens there); pass "
                                     "another --port, or stop that program")
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # queued until the server accepts
            pass
    finally:
        _close(first)


def test_a_host_name_listens_on_each_of_its_addresses_on_one_port():
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    sockets = listen("localhost", 0)
    try:
        assert {sock.getsockname()[0] for sock in sockets} == addresses
        assert len({sock.getsockname()[1] for sock in sockets}) == 1  # port 0: one free port for every address
        for sock in sockets:
            if sock.family == socket.AF_INET6:  # IPv6-only, as asyncio binds it: `::` does not take IPv4 too
                assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
                assert address_text(sock).startswith("http://[")
    finally:
        _close(sockets)


def test_a_host_that_is_not_this_machines_is_one_line():
    with pytest.raises(UsageError, match=r"^--host no-such-host\.invalid is not a name or address this machine can "
                                         r"listen on \(.*\); pass 127\.0\.0\.1, or 0\.0\.0\.0 for every interface$"):
        listen("no-such-host.invalid", 0)
    with pytest.raises(UsageError, match=r"^cannot listen on --host 192\.0\.2\.1 --port 0 \(.*\); pass an address of "
                                         "this machine"):
        listen("192.0.2.1", 0)  # TEST-NET-1: never an address of this machine
