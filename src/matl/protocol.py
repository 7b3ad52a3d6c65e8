"""The signed messages exchanged by MATL nodes and validators.

Three messages carry signatures, each over :func:`matl.crypto.canonical_json` of its fields plus
a ``type`` tag (so no signature can be replayed as another kind of message):

``SubmissionHeader``  signed by the node:  (round, nonce, gradient hash, metadata)
``Receipt``           signed by the validator when the submission is durable in its ledger
``Verdict``           signed by the validator: (gradient hash, node id, round, score, verdict,
                      reasons, timestamp)

Anyone holding the validator's id (its public key, see :mod:`matl.crypto`) can check a receipt or
a verdict offline with ``.verify()``.
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from matl.crypto import Identity, canonical_json, verify_signature
from matl.wire import as_vector, encode_vector, gradient_hash

__all__ = [
    "NodeReputation",
    "Receipt",
    "RoundInfo",
    "Submission",
    "SubmissionHeader",
    "TrustedGradient",
    "Verdict",
    "VerdictLabel",
    "sign_message",
]

VerdictLabel = Literal["accepted", "flagged", "rejected"]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json_dict(self) -> dict[str, Any]:
        """The message as JSON-able data (``Model.model_validate`` reads it back)."""
        return self.model_dump(mode="json")


class _Signed(_Message):
    """A message whose ``signature`` (hex) covers every other field."""

    message_type: ClassVar[str] = ""
    signature: str = ""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the signer signs: every field but the signature, plus a type tag."""
        fields = self.model_dump(mode="json", exclude={"signature"})
        return canonical_json({"type": self.message_type, **fields})

    def _verify_as(self, signer_id: str) -> bool:
        try:
            sig = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_signature(signer_id, self.signing_bytes(), sig)


class SubmissionHeader(_Message):
    """What a node signs when it submits a gradient."""

    node_id: str
    round: int = Field(ge=0)
    nonce: str = Field(min_length=1, max_length=128)
    gradient_hash: str = Field(min_length=64, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def signing_bytes(self) -> bytes:
        """Canonical bytes of the header with the ``matl.submission.v1`` tag."""
        return canonical_json({"type": "matl.submission.v1", **self.model_dump(mode="json")})


class Submission(BaseModel):
    """A signed gradient submission: header, the node's signature (hex) and the payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    header: SubmissionHeader
    signature: str
    payload: bytes

    @classmethod
    def create(
        cls,
        identity: Identity,
        gradient: Any,
        *,
        round: int,
        metadata: dict[str, Any] | None = None,
        nonce: str | None = None,
    ) -> Submission:
        """Encode ``gradient`` (tensor, array, state dict or module) and sign it for ``round``."""
        vec = as_vector(gradient)
        header = SubmissionHeader(
            node_id=identity.node_id,
            round=round,
            nonce=nonce or secrets.token_hex(16),
            gradient_hash=gradient_hash(vec),
            metadata=dict(metadata or {}),
        )
        return cls(
            header=header,
            signature=identity.sign(header.signing_bytes()).hex(),
            payload=encode_vector(vec),
        )

    def verify(self) -> bool:
        """Whether the signature is the header's node's signature of the header."""
        try:
            sig = bytes.fromhex(self.signature)
        except ValueError:
            return False
        return verify_signature(self.header.node_id, self.header.signing_bytes(), sig)


class Receipt(_Signed):
    """The validator's acknowledgement: the submission is durable at ledger ``sequence``."""

    message_type: ClassVar[str] = "matl.receipt.v1"
    node_id: str
    round: int
    nonce: str
    gradient_hash: str
    sequence: int
    received_at: float
    validator_id: str

    def verify(self, validator_id: str | None = None) -> bool:
        """Check the validator's signature (against ``validator_id`` when given)."""
        if validator_id is not None and validator_id != self.validator_id:
            return False
        return self._verify_as(self.validator_id)


class Verdict(_Signed):
    """The validator's signed decision on one gradient."""

    message_type: ClassVar[str] = "matl.verdict.v1"
    gradient_hash: str
    node_id: str
    round: int
    score: float
    verdict: VerdictLabel
    reasons: list[dict[str, Any]] = Field(default_factory=list)
    timestamp: float
    validator_id: str

    def verify(self, validator_id: str | None = None) -> bool:
        """Check the validator's signature (against ``validator_id`` when given)."""
        if validator_id is not None and validator_id != self.validator_id:
            return False
        return self._verify_as(self.validator_id)


class RoundInfo(_Message):
    """The validator's open round and what it expects."""

    round: int
    open: bool
    submissions: int
    round_size: int
    dim: int
    mode: int
    validator_id: str


class TrustedGradient(_Message):
    """A gradient the validator accepted in a round, with its score and aggregation weight."""

    node_id: str
    gradient_hash: str
    score: float
    weight: float


class NodeReputation(_Message):
    """A node's standing with the validator (RB-BFT reputation, see :mod:`matl.trust.reputation`)."""

    node_id: str
    reputation: float
    quarantined: bool
    rounds_seen: int


S = TypeVar("S", bound=_Signed)


def sign_message(message: S, identity: Identity) -> S:
    """A copy of ``message`` signed by ``identity`` (the validator)."""
    return message.model_copy(update={"signature": identity.sign(message.signing_bytes()).hex()})
