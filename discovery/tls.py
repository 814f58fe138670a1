"""Encrypted peer traffic (`--tls`): each peer's own certificate, pinned through its record.

There is no certificate authority on a home LAN. Each peer makes a self-signed certificate once
(kept in its state directory) and publishes the SHA-256 of it in its signed gossip record; a peer
that dials another pins that fingerprint (aiohttp's `Fingerprint`), so a host in the middle
cannot pose as a member. A first contact (an mDNS find, a bootstrap address) has no fingerprint
yet: it is encrypted but unpinned, and trusted only once its reply is signed with the cluster
secret. Who may connect is still decided by the secret's HMAC, not by client certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import Fingerprint
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE, KEY_FILE = "tls.crt", "tls.key"
Pin = Fingerprint | bool  # aiohttp's `ssl=`: a pin, False (encrypted, unpinned), True (its default)


def certificate(directory: Path) -> tuple[ssl.SSLContext, str]:
    """The server context of this peer's certificate (made on first use) and its fingerprint."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not (cert_path.exists() and key_path.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeshard-peer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))  # pinned, not trusted by date
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, hashlib.sha256(der).hexdigest()


NOBODY = Fingerprint(bytes(32))  # matches no certificate: a dial that must fail


def pins(fingerprints: Callable[[], Iterable[tuple[str, str]]]) -> Callable[[str], Pin]:
    """`ssl=` for a URL: the pinned fingerprint of the peer at that address, else unpinned TLS
    (first contacts); plain http ignores it. Two records that claim one address with different
    certificates (a member posing as another) pin nothing that could pass: fail closed."""

    def pin(url: str) -> Pin:
        if not url.startswith("https://"):
            return True
        base = "/".join(url.split("/", 3)[:3])  # https://host:port
        claimed = {cert for address, cert in fingerprints() if address == base}
        if len(claimed) > 1:
            return NOBODY
        return Fingerprint(bytes.fromhex(claimed.pop())) if claimed else False

    return pin
