"""Peer-to-peer authentication with the cluster secret: an HMAC over each request.

A request from one member to another carries `X-EdgeShard-Auth: TS.NONCE.BODY.MAC`, where BODY
is the SHA-256 of the body and MAC is HMAC-SHA256, under a key derived from the cluster secret,
over the method, the path with its query, the timestamp (ms), the nonce and BODY. The receiver
checks the header before it reads the body, accepts it only within `WINDOW_S` of its own clock
and only once (a nonce is remembered as long as its request could be valid), so a captured
request cannot be replayed. A WebSocket is authenticated by its upgrade request; a
response is authenticated by an HMAC over the request's nonce and the response body, so a member
knows the answer came from a member too. Without a secret (`Authenticator(None)`) nothing is
signed or checked: an open cluster, for trying things out.

The secret file (`edgeshard init --out FILE`) holds 32 random bytes in URL-safe base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER = "X-EdgeShard-Auth"
RESPONSE_HEADER = "X-EdgeShard-Reply"
WINDOW_S = 60.0  # clock difference tolerated between members (NTP keeps LAN clocks far closer)
MAX_NONCES = 100_000  # remembered nonces; the oldest go first (they leave the window anyway)
SECRET_BYTES = 32


class SecretError(ValueError):
    """The secret file is missing, unreadable, malformed or readable by others."""


def new_secret() -> str:
    """A fresh cluster secret, as the file holds it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def write_secret(path: Path, force: bool = False) -> None:
    """Write a new secret to `path`, readable by its owner only (never over an existing one
    unless `force`: every member would have to get the new one)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SecretError(f"{path} exists: every member holds that secret (--force makes a new one)") from None
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(descriptor, 0o600)
        file.write(new_secret() + "\n")


def read_secret(path: Path) -> bytes:
    """The secret in `path` (SecretError says what is wrong, for the user)."""
    try:
        info = path.stat()
        text = path.read_text().strip()
    except OSError as error:
        raise SecretError(f"{path}: {error.strerror or error} (make one with `edgeshard init --out {path}`)") from None
    # A systemd credential may be shared with the service's user by an ACL (group bits): fine.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    given_by_systemd = credentials is not None and path.resolve().parent == Path(credentials).resolve()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) and not given_by_systemd:
        raise SecretError(f"{path} can be read by other users: chmod 600 {path}")
    try:
        secret = base64.urlsafe_b64decode(text.encode())
    except ValueError:
        secret = b""
    if len(secret) < SECRET_BYTES:
        raise SecretError(f"{path}: not a cluster secret (make one with `edgeshard init --out FILE`)")
    return secret


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"edgeshard/" + purpose).derive(secret)


class Authenticator:
    """Signs this member's requests and checks others' (`secret` None: an open cluster)."""

    def __init__(self, secret: bytes | None, clock: Callable[[], float] = time.time) -> None:
        self.open = secret is None
        self._key = _derive(secret, b"request-mac/v1") if secret is not None else b""
        self.clock = clock
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce → when it may be forgotten

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._key, b"\n".join(parts), hashlib.sha256).hexdigest().encode()

    def sign(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        """Headers that authenticate this request ({} in an open cluster)."""
        if self.open:
            return {}
        stamp, nonce, digest = str(int(self.clock() * 1000)), secrets.token_hex(12), _digest(body)
        mac = self._mac(method.upper().encode(), path_qs.encode(), stamp.encode(), nonce.encode(), digest.encode())
        return {HEADER: f"{stamp}.{nonce}.{digest}.{mac.decode()}"}

    def check_head(self, method: str, path_qs: str, header: str | None) -> tuple[str | None, str]:
        """(None, body digest) when the request's header is authentic and fresh, else (why not,
        ""). Checked before the body is read: a host without the secret cannot make a peer
        buffer a body. The caller compares the body's digest (`body_matches`)."""
        if self.open:
            return None, ""
        if not header:
            return "no credentials: it does not hold this cluster's secret", ""
        match = _CREDENTIALS.fullmatch(header)
        if match is None:
            return "malformed credentials", ""
        stamp, nonce, digest, mac = match.groups()
        parts = (method.upper().encode(), path_qs.encode(), stamp.encode(), nonce.encode(), digest.encode())
        if not hmac.compare_digest(self._mac(*parts), mac.encode()):
            return "wrong credentials: it holds another secret (or none)", ""
        now, sent = self.clock(), int(stamp) / 1000
        if abs(now - sent) > WINDOW_S:
            return f"its clock is {sent - now:+.0f} s off ours (more than {WINDOW_S:.0f} s: check NTP)", ""
        self._forget(now)
        if nonce in self._nonces:
            return "a replayed request", ""
        self._nonces[nonce] = max(now, sent) + WINDOW_S  # valid until then: remembered until then
        return None, digest

    def body_matches(self, digest: str, body: bytes) -> bool:
        """Whether `body` is the one whose digest an authentic header (`check_head`) carried."""
        return self.open or hmac.compare_digest(digest.encode(), _digest(body).encode())

    def check(self, method: str, path_qs: str, header: str | None, body: bytes = b"") -> str | None:
        """None when the request (header and body) is authentic and fresh, else why not."""
        why, digest = self.check_head(method, path_qs, header)
        if why is None and not self.body_matches(digest, body):
            return "the body is not the one signed"
        return why

    def _forget(self, now: float) -> None:
        while self._nonces and (len(self._nonces) >= MAX_NONCES or next(iter(self._nonces.values())) < now):
            self._nonces.popitem(last=False)

    def sign_reply(self, request_header: str | None, body: bytes) -> dict[str, str]:
        """Headers that show a response came from a member (to the request with that header)."""
        if self.open or not request_header:
            return {}
        return {RESPONSE_HEADER: self._mac(b"reply", request_header.encode(), _digest(body).encode()).decode()}

    def check_reply(self, request_headers: dict[str, str], header: str | None, body: bytes) -> bool:
        """Whether a response to a request we signed came from a member (never raises: the
        header comes from whoever answered)."""
        if self.open:
            return True
        if header is None or not header.isascii():
            return False
        expected = self._mac(b"reply", request_headers[HEADER].encode(), _digest(body).encode())
        return hmac.compare_digest(expected, header.encode())


_CREDENTIALS = re.compile(r"(\d{1,15})\.([0-9a-f]{8,64})\.([0-9a-f]{64})\.([0-9a-f]{64})", re.ASCII)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


Refused = Callable[[str, str], None]  # (remote host, why)


def middleware(auth: Authenticator, refused: Refused) -> Any:
    """aiohttp middleware for the peer port: only members' requests reach a handler, and
    plain responses to them are signed. In an open cluster it lets everything through."""
    from aiohttp import web

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if auth.open:
            response: web.StreamResponse = await handler(request)
            return response
        header = request.headers.get(HEADER)
        why, digest = auth.check_head(request.method, request.raw_path, header)
        if why is None:
            body = await request.read() if request.body_exists else b""  # bounded by client_max_size
            if not auth.body_matches(digest, body):
                why = "the body is not the one signed"
        if why is not None:
            refused(request.remote or "unknown", why)
            return web.Response(status=401, text="refused: not signed with this cluster's secret")
        response = await handler(request)
        if isinstance(response, web.Response) and not response.prepared and isinstance(response.body, bytes):
            response.headers.update(auth.sign_reply(header, response.body))
        return response

    return check
