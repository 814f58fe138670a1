"""What guards this peer: the cluster secret, the refusals it made, the open-cluster warning.

Without a secret the peer runs as an open cluster (anyone on the LAN may join, read prompts and
choose answers): fine for trying things out, and said loudly at start and in every status.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgeshard.discovery.auth import Authenticator, SecretError, read_secret
from edgeshard.discovery.records import PeerRecord
from edgeshard.discovery.tls import Pin, certificate, pins

from ..errors import PeerError
from .config import PeerConfig

log = logging.getLogger("edgeshard.peer")

MAX_REFUSED_HOSTS = 256
OPEN_WARNING = (
    "OPEN CLUSTER: no --secret-file, so any host on this network can join, read prompts and "
    "choose answers; make a secret with `edgeshard init --out FILE` and give it to every peer"
)


class Security:
    """The peer's authenticator and its record of refused hosts."""

    def __init__(self, config: PeerConfig) -> None:
        secret = None
        if config.secret_file:
            try:
                secret = read_secret(Path(config.secret_file))
            except SecretError as error:
                raise PeerError(f"secret_file: {error}") from None
        elif config.tls:
            raise PeerError("tls: needs secret_file (the certificates are pinned through signed records)")
        self.auth = Authenticator(secret)
        self.tls = config.tls
        self.refused: dict[str, int] = {}  # host → requests refused (bounded)

    def server_tls(self, state_dir: Path) -> tuple[ssl.SSLContext | None, str]:
        """Under --tls: the peer port's TLS context and the certificate's fingerprint for our
        record (made once in the state directory); else (None, "")."""
        return certificate(state_dir) if self.tls else (None, "")

    def pin(self, records: Callable[[], Iterable[PeerRecord]]) -> Callable[[str], Pin]:
        """aiohttp's `ssl=` for each address we dial: the certificate its record pins."""
        return pins(lambda: [(record.address, record.cert) for record in records() if record.cert])

    def announce(self) -> None:
        """Say at start how this peer is guarded."""
        if self.auth.open:
            log.warning("%s", OPEN_WARNING)
        else:
            log.info(
                "cluster secret loaded: peers without it are refused%s",
                "; peer traffic encrypted (TLS)" if self.tls else "",
            )

    def on_refused(self, host: str, why: str) -> None:
        """A request without valid credentials was refused: log the first from each host."""
        if host not in self.refused:
            if len(self.refused) >= MAX_REFUSED_HOSTS:
                return
            log.warning("refused a request from %s: %s (further ones from it are counted, not logged)", host, why)
            self.refused[host] = 0
        self.refused[host] += 1

    def status(self) -> dict[str, Any]:
        """The `security` part of the status document."""
        return {
            "mode": "open" if self.auth.open else "secret",
            "tls": self.tls,
            "warning": OPEN_WARNING if self.auth.open else None,
            "refused": dict(self.refused),
        }
