"""Each peer's key pair: its id is its public key's hash, and it signs every record it issues.

A peer id is the first 16 hex digits of SHA-256 of the peer's Ed25519 public key, so an id
cannot be claimed without the private key: a member can speak only for itself. A record travels
as the exact msgpack bytes its owner signed plus the signature, and is forwarded unchanged; the
receiver checks both the signature and that the key hashes to the id. Checking costs tens of
microseconds, and the same record arrives many times over gossip, so results are cached.
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

KEY_BYTES = 32
SIGNATURE_BYTES = 64
ID_HEX_DIGITS = 16


def peer_id_of(public_key: bytes) -> str:
    """The peer id a public key stands for."""
    return hashlib.sha256(public_key).hexdigest()[:ID_HEX_DIGITS]


@functools.lru_cache(maxsize=4096)
def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the key's over `data`."""
    if len(public_key) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


class Signer:
    """A peer's private key."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self._key = private_key or Ed25519PrivateKey.generate()
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id = peer_id_of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        """The signature of `data`."""
        return self._key.sign(data)

    def private_bytes(self) -> bytes:
        """The key as the state directory keeps it (PKCS#8 PEM, unencrypted: the file is 0600)."""
        return self._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Signer:
        """A key read back from the state directory (ValueError when it is not one)."""
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return cls(key)
