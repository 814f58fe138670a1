"""The peer's exceptions: one root; remote faults are told apart from local ones."""

from __future__ import annotations


class PeerError(Exception):
    """Root of every error the peer raises."""


class ModelFileError(PeerError):
    """The model file or directory cannot be used."""


class ProtocolError(PeerError):
    """A frame from a remote is malformed or not acceptable here (the remote's fault)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StageError(PeerError):
    """A stage reported an error for a session, or could not be reached.

    `code` is the remote's error code ("unreachable" when the link itself failed); the origin
    uses it to tell a fault worth a fail-over from a request that can never succeed.
    """

    def __init__(self, message: str, code: str = "unreachable") -> None:
        super().__init__(message)
        self.code = code
