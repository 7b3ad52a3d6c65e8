"""Ed25519 identities, did:key ids, signatures and key files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matl.crypto import (
    Identity,
    canonical_json,
    node_id_from_public_key,
    public_key_from_node_id,
    sha256_hex,
    verify_signature,
)
from matl.errors import AuthenticationError, ConfigError


def test_did_key_of_the_zero_seed_matches_the_published_vector() -> None:
    # The did:key test vector for the Ed25519 key derived from 32 zero bytes.
    me = Identity.from_seed(bytes(32))
    assert me.node_id == "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    assert public_key_from_node_id(me.node_id) == me.public_key
    assert node_id_from_public_key(me.public_key) == me.node_id


def test_signatures_verify_and_fail_on_any_change() -> None:
    me, other = Identity.generate(), Identity.generate()
    sig = me.sign(b"round 3")
    assert verify_signature(me.node_id, b"round 3", sig)
    assert not verify_signature(me.node_id, b"round 4", sig)
    assert not verify_signature(other.node_id, b"round 3", sig)
    assert not verify_signature(me.node_id, b"round 3", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature("did:key:zNotAKey", b"round 3", sig)
    assert not verify_signature(me.node_id, b"round 3", b"short")


@pytest.mark.parametrize("bad", ["", "did:web:x", "did:key:z0OIl", "did:key:z6Mk"])
def test_malformed_node_ids_are_refused(bad: str) -> None:
    with pytest.raises(AuthenticationError):
        public_key_from_node_id(bad)


def test_key_files_are_private_and_round_trip(tmp_path: Path) -> None:
    me = Identity.generate()
    path = me.save(tmp_path / "keys" / "node.pem")
    assert (path.stat().st_mode & 0o777) == 0o600
    assert Identity.load(path).node_id == me.node_id
    with pytest.raises(ConfigError, match="exists"):
        me.save(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Identity.load(path)
    with pytest.raises(ConfigError, match="matl keygen"):
        Identity.load(tmp_path / "missing.pem")


def test_canonical_json_is_order_independent_and_rejects_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "x"]}) == b'{"a":[1.5,"x"],"b":1}'
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
