import socket

import pytest

from tests.conftest import ForbiddenConnection


def test_connect_outside_loopback_fails_at_once():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ForbiddenConnection):
        sock.connect(("93.184.216.34", 80))
    sock.close()


def test_loopback_is_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
