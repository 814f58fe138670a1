"""The state directory: what makes a peer the same peer across restarts.

It holds the peer's key (its id is the key's hash, `discovery.signing`) and the last
incarnation it used, which only goes up: a board without a real-time clock that boots before
NTP still comes back newer than its previous life. A lock file keeps two peers from sharing one
directory (they would share an id). The key is created on first start, never copied: a board
cloned from an image made before its first start gets its own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from edgeshard.discovery.signing import Signer

from ..errors import PeerError

KEY_FILE = "peer.key"
INCARNATION_FILE = "incarnation"
LOCK_FILE = "lock"


class PeerState:
    """An open, locked state directory."""

    def __init__(self, directory: Path, signer: Signer, lock: IO[bytes]) -> None:
        self.directory = directory
        self.signer = signer
        self._lock = lock  # held open: the lock lasts as long as the process
        self.incarnation = self._read_incarnation()

    @classmethod
    def open(cls, directory: Path) -> PeerState:
        """Lock `directory` (created 0700 if absent) and load or create the key."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = (directory / LOCK_FILE).open("ab")
        except OSError as error:
            raise PeerError(f"state directory {directory}: {error.strerror or error}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise PeerError(
                f"state directory {directory} is in use by another peer: give each peer its own --state-dir"
            ) from None
        key_path = directory / KEY_FILE
        try:
            signer = Signer.from_private_bytes(key_path.read_bytes())
        except FileNotFoundError:
            signer = Signer()
            _write(key_path, signer.private_bytes())
        except (OSError, ValueError) as error:
            lock.close()
            raise PeerError(f"{key_path}: not this peer's key ({error}); move it away to start as a new peer") from None
        return cls(directory, signer, lock)

    def _read_incarnation(self) -> int:
        try:
            return max(0, int((self.directory / INCARNATION_FILE).read_text().strip()))
        except (OSError, ValueError):
            return 0

    def next_incarnation(self) -> int:
        """The incarnation of this start: one above any used before, and kept."""
        self.keep_incarnation(self.incarnation + 1)
        return self.incarnation

    def keep_incarnation(self, incarnation: int) -> None:
        """Remember `incarnation` (a refutation raised it) before using it."""
        if incarnation > self.incarnation:
            self.incarnation = incarnation
            _write(self.directory / INCARNATION_FILE, f"{incarnation}\n".encode())

    def close(self) -> None:
        """Release the lock."""
        self._lock.close()


def _write(path: Path, data: bytes) -> None:
    """Replace `path` atomically and durably (mode 0600): a crash leaves the old or the new."""
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
