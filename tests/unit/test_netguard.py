import socket

import pytest

from tests.fixtures.netguard import NetworkGuardError


def test_connections_outside_loopback_are_stopped_before_they_leave(network_guard):
    with socket.socket() as sock, pytest.raises(NetworkGuardError):
        sock.connect(("192.0.2.1", 25))  # TEST-NET-1: documentation only
    assert network_guard == ["connect to ('192.0.2.1', 25)"]
    network_guard.clear()  # seen and expected: do not fail this test at teardown


def test_real_name_lookups_are_stopped(network_guard):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("mail.example.com", 25)
    assert network_guard == ["name lookup of 'mail.example.com'"]
    network_guard.clear()


def test_reserved_names_fail_to_resolve_without_counting_as_access(network_guard):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("no-such-host.invalid", 25)
    assert network_guard == []


def test_loopback_is_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
