"""Ed25519 identities, ``did:key`` node ids and the canonical bytes that MATL signs.

Every node and every validator holds an Ed25519 key pair (RFC 8032, through the
``cryptography`` package). A node's id is its public key in the W3C ``did:key`` form:
``did:key:z`` followed by the base58btc encoding of the multicodec prefix ``0xed 0x01`` and the
32 raw public-key bytes. The id *is* the key, so anyone can check a signature offline from the
id alone, without asking the validator.

What gets signed is always :func:`canonical_json` of a small dict that names its message type
(``"matl.submission.v1"``, ``"matl.verdict.v1"``, ...), so a signature over one kind of message
can never be replayed as another.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from matl.errors import AuthenticationError, ConfigError

__all__ = [
    "Identity",
    "canonical_json",
    "node_id_from_public_key",
    "public_key_from_node_id",
    "sha256_hex",
    "verify_signature",
]

_DID_PREFIX = "did:key:z"
_ED25519_MULTICODEC = b"\xed\x01"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def _b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet); leading zero bytes become leading ``1``s."""
    number = int.from_bytes(data, "big")
    out = []
    while number:
        number, digit = divmod(number, 58)
        out.append(_B58[digit])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"{char!r} is not a base58 character")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def node_id_from_public_key(public_key: bytes) -> str:
    """The ``did:key`` id of a 32-byte raw Ed25519 public key."""
    if len(public_key) != 32:
        raise AuthenticationError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return _DID_PREFIX + _b58encode(_ED25519_MULTICODEC + public_key)


def public_key_from_node_id(node_id: str) -> bytes:
    """The raw public key inside a ``did:key`` id; :class:`AuthenticationError` if malformed."""
    if not isinstance(node_id, str) or not node_id.startswith(_DID_PREFIX):
        raise AuthenticationError(f"node id {node_id!r} is not a did:key id (did:key:z6Mk...)")
    try:
        raw = _b58decode(node_id[len(_DID_PREFIX) :])
    except ValueError as exc:
        raise AuthenticationError(f"node id {node_id!r} is not valid base58: {exc}") from None
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise AuthenticationError(f"node id {node_id!r} does not hold an Ed25519 public key")
    return raw[2:]


def verify_signature(node_id: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``node_id``'s Ed25519 signature of ``message``.

    Returns ``False`` (never raises) for a malformed id or signature, so callers can treat every
    failure the same way.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key_from_node_id(node_id))
        key.verify(signature, message)
    except (InvalidSignature, AuthenticationError, ValueError, TypeError):
        return False
    return True


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace, UTF-8, no NaN.

    Floats use Python's shortest round-trip repr, so a value read back from JSON re-encodes to
    the same bytes.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` as 64 lowercase hex characters."""
    return hashlib.sha256(data).hexdigest()


class Identity:
    """An Ed25519 signing key with its ``did:key`` node id.

    Examples
    --------
    >>> me = Identity.from_seed(bytes(32))
    >>> verify_signature(me.node_id, b"hi", me.sign(b"hi"))
    True
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id: str = node_id_from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key from the operating system's random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic key from a 32-byte seed (tests and simulations only)."""
        if len(seed) != 32:
            raise ConfigError(f"an Ed25519 seed has 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._key.sign(message)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the key as unencrypted PKCS#8 PEM, readable by the owner only (mode 0600)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ConfigError(f"{path} exists; pass overwrite=True to replace the key in it")
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """Read a key written by :meth:`save`; refuses files others can read."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no key file at {path} (create one with `matl keygen {path}`)")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"key file {path} is accessible by group or others (mode {oct(mode & 0o777)}); "
                f"run `chmod 600 {path}`"
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def __repr__(self) -> str:
        return f"Identity({self.node_id})"
