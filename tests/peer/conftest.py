"""Fixtures shared by the peer tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def not_http() -> Iterator[str]:
    """A port that answers, but not HTTP (an SSH banner, as a TLS or peer port would confuse urllib)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = listener.accept()
                with connection:
                    connection.recv(4096)
                    connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
