"""The IO-free validator core: registration, rounds, intake, scoring, ledger, queries.

:class:`MATLValidator` is what every transport (HTTP, gRPC, WebSocket, in-process) calls. It does
no network IO: it takes decoded requests, writes to the :class:`~matl.ledger.Ledger` it was given
and returns signed :mod:`matl.protocol` messages.

**Intake** (:meth:`MATLValidator.submit`), in this order — the first failing check raises and
nothing is stored:

1. metadata size (:class:`~matl.errors.PayloadTooLargeError`);
2. the node's signature over its header (:class:`~matl.errors.AuthenticationError`);
3. the node is registered (:class:`~matl.errors.UnknownNodeError`);
4. the round is the open one (:class:`~matl.errors.WrongRoundError`);
5. no earlier submission by this node in this round (:class:`~matl.errors.ReplayError`);
6. the payload: size, safetensors envelope, float32, length, finite values, and its SHA-256
   equal to the signed ``gradient_hash``.

The submission and its payload are then written to the ledger in one transaction; only after the
commit is the signed :class:`~matl.protocol.Receipt` returned ("durable before acknowledged").

**Scoring.** When ``round_size`` submissions are in (or on :meth:`close_round`), the round's
updates go through the MATL trust engine (:class:`matl.trust.rule.MATLRule`, the same code the
simulator measures) with a :class:`~matl.aggregation.RoundContext` carrying the global model and,
in Mode 1, the validation data. Every submission gets a signed
:class:`~matl.protocol.Verdict`: ``accepted`` (weight > 0), ``flagged`` (the trust engine did not
trust it this round) or ``rejected`` (its node is quarantined by RB-BFT reputation). The
aggregate moves the global model, :math:`\\theta \\leftarrow \\theta + \\eta_s\\,\\sum_i w_i u_i`.

**Persistence.** After scoring, the validator writes its state (round, global model, the trust
engine's :meth:`~matl.trust.rule.MATLRule.state_dict` — reputations included — and the signed
verdicts) to the ledger's state store *before* appending the verdict entries; a restart reloads
that state, re-appends any verdict entry a crash cut off, and reloads the open round's
acknowledged submissions from the ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from matl.aggregation.base import RoundContext
from matl.crypto import Identity, canonical_json, node_id_from_public_key
from matl.errors import (
    AuthenticationError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    UnknownNodeError,
    WrongRoundError,
)
from matl.protocol import (
    NodeReputation,
    Receipt,
    RoundInfo,
    Submission,
    TrustedGradient,
    Verdict,
    VerdictLabel,
    sign_message,
)
from matl.trust.rule import MATLRule
from matl.validator.config import ValidatorConfig
from matl.validator.state_codec import decode_state, encode_state
from matl.validator.task import Task, build_task
from matl.wire import decode_vector, encode_vector, gradient_hash

__all__ = ["MATLValidator", "VerdictListener"]

VerdictListener = Callable[[Verdict], None]
_STATE_KEY = "validator"


class MATLValidator:
    """The PoGQ oracle and ledger keeper of one MATL deployment.

    Parameters
    ----------
    config:
        :class:`~matl.validator.ValidatorConfig`.
    ledger:
        A :class:`~matl.ledger.Ledger` (SQLite or PostgreSQL); its state store keeps the
        validator's state across restarts.
    identity:
        The validator's Ed25519 key; its ``did:key`` id is the ``validator_id`` on every receipt,
        verdict and ledger entry.
    clock:
        Seconds since the epoch (injectable for tests).
    task:
        A prebuilt :class:`~matl.validator.task.Task` (default: built from ``config``).

    Examples
    --------
    >>> from matl.ledger import open_ledger
    >>> v = MATLValidator(ValidatorConfig(dim=4, round_size=3), open_ledger("ledger.db"),
    ...                   Identity.generate())  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ValidatorConfig,
        ledger: Any,
        identity: Identity,
        *,
        clock: Callable[[], float] = time.time,
        task: Task | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.identity = identity
        self.clock = clock
        self.task = task if task is not None else build_task(config)
        self._lock = threading.RLock()
        self._listeners: list[VerdictListener] = []
        self.rule = MATLRule(mode=config.mode, **config.trust)
        self.round = 0
        self.theta = self.task.init.clone()
        self._node_index: dict[str, int] = {}
        self._round_weights: dict[int, dict[str, float]] = {}
        self._pending: dict[str, tuple[Receipt, np.ndarray]] = {}
        self._pending_hashes: set[str] = set()
        self._restore()

    # ------------------------------------------------------------------------------ identity
    @property
    def validator_id(self) -> str:
        """The validator's ``did:key`` id (its public key)."""
        return self.identity.node_id

    def info(self) -> dict[str, Any]:
        """Static facts a client needs: ids, limits, mode, vector length."""
        cfg = self.config
        return {
            "validator_id": self.validator_id,
            "mode": cfg.mode,
            "dim": self.task.dim,
            "round_size": cfg.round_size,
            "max_payload_bytes": cfg.max_payload_bytes,
            "max_metadata_bytes": cfg.max_metadata_bytes,
            "registration": cfg.registration,
            "task": (
                None
                if cfg.dataset is None
                else {
                    "dataset": cfg.dataset,
                    "dataset_options": cfg.dataset_options,
                    "model": cfg.model,
                    "hidden": cfg.hidden,
                    "seed": cfg.seed,
                }
            ),
        }

    # -------------------------------------------------------------------------- registration
    def register(self, public_key: bytes) -> str:
        """Register a node's 32-byte Ed25519 public key; returns its ``did:key`` node id.

        Idempotent: registering the same key again returns the same id.
        """
        node_id = node_id_from_public_key(public_key)
        with self._lock:
            if self.config.registration == "allowlist" and node_id not in self.config.allowlist:
                raise UnknownNodeError(f"node {node_id} is not on this validator's allow-list")
            if self.ledger.get_node(node_id) is None:
                self.ledger.add_node(node_id, public_key.hex(), self.clock())
                self._node_index[node_id] = len(self._node_index)
            return node_id

    def _index_of(self, node_id: str) -> int:
        if node_id not in self._node_index:
            raise UnknownNodeError(f"node {node_id} is not registered with this validator")
        return self._node_index[node_id]

    # ---------------------------------------------------------------------------- round state
    def round_info(self) -> RoundInfo:
        """The open round: its number, submissions so far and the size that closes it."""
        with self._lock:
            return RoundInfo(
                round=self.round,
                open=True,
                submissions=len(self._pending),
                round_size=self.config.round_size,
                dim=self.task.dim,
                mode=self.config.mode,
                validator_id=self.validator_id,
            )

    def global_model(self) -> np.ndarray:
        """The current global parameters (what nodes train from this round)."""
        with self._lock:
            out: np.ndarray = self.theta.numpy().copy()
            return out

    # -------------------------------------------------------------------------------- intake
    def submit(self, submission: Submission) -> Receipt:
        """Check, durably record and acknowledge one submission (see the module docstring)."""
        header = submission.header
        cfg = self.config
        meta_bytes = len(canonical_json(header.metadata))
        if meta_bytes > cfg.max_metadata_bytes:
            raise PayloadTooLargeError(
                f"metadata is {meta_bytes} bytes of JSON; the limit is {cfg.max_metadata_bytes}"
            )
        if not submission.verify():
            raise AuthenticationError(
                f"the signature does not verify against node {header.node_id}'s key"
            )
        with self._lock:
            self._index_of(header.node_id)
            if header.round != self.round:
                raise WrongRoundError(
                    f"submission is for round {header.round}; round {self.round} is open"
                )
            if header.node_id in self._pending:
                prior = self._pending[header.node_id][0]
                raise ReplayError(
                    f"node {header.node_id} already submitted in round {self.round} "
                    f"(nonce {prior.nonce}, gradient {prior.gradient_hash[:12]}…, "
                    f"ledger entry {prior.sequence})"
                )
            vec = decode_vector(
                submission.payload, max_bytes=cfg.max_payload_bytes, expected_size=self.task.dim
            )
            if gradient_hash(vec) != header.gradient_hash:
                raise AuthenticationError(
                    "the payload's SHA-256 does not match the signed gradient_hash"
                )
            now = self.clock()
            entry = self.ledger.append_submission_with_payload(
                round=self.round,
                node_id=header.node_id,
                gradient_hash=header.gradient_hash,
                nonce=header.nonce,
                metadata=header.metadata,
                node_signature=submission.signature,
                payload=submission.payload,
                timestamp=now,
                sign=self.identity.sign,
                validator_id=self.validator_id,
            )
            receipt = self._receipt(entry)
            self._pending[header.node_id] = (receipt, vec)
            self._pending_hashes.add(receipt.gradient_hash)
            if len(self._pending) >= cfg.round_size:
                self._close_locked()
            return receipt

    def receipt(self, node_id: str, round: int) -> Receipt:
        """The signed receipt of ``node_id``'s submission in ``round`` (safe retries use it)."""
        entry = self.ledger.find_submission(node_id, round)
        if entry is None:
            raise NotFoundError(f"no submission by {node_id} in round {round}")
        return self._receipt(entry)

    def _receipt(self, entry: Any) -> Receipt:
        return sign_message(
            Receipt(
                node_id=entry.node_id,
                round=entry.round,
                nonce=entry.nonce,
                gradient_hash=entry.gradient_hash,
                sequence=entry.seq,
                received_at=entry.timestamp,
                validator_id=self.validator_id,
            ),
            self.identity,
        )

    # ------------------------------------------------------------------------------- scoring
    def close_round(self) -> list[Verdict]:
        """Score the open round now, even below ``round_size`` (at least ``min_round_size``)."""
        with self._lock:
            if len(self._pending) < self.config.min_round_size:
                raise ServiceError(
                    f"round {self.round} has {len(self._pending)} submissions; closing it needs "
                    f"at least {self.config.min_round_size}"
                )
            return self._close_locked()

    def _close_locked(self) -> list[Verdict]:
        nodes = list(self._pending)
        receipts = [self._pending[n][0] for n in nodes]
        updates = torch.from_numpy(np.stack([self._pending[n][1] for n in nodes]))
        ids = tuple(self._node_index[n] for n in nodes)
        ctx = RoundContext(
            client_ids=ids,
            round=self.round,
            global_params=self.theta,
            validation=self.task.validation,
            model=self.task.model,
        )
        result = self.rule(updates, ctx)
        details = result.details or {}
        quarantined = set(details.get("quarantined", []))
        reasons_by_id = {v["client_id"]: v["reasons"] for v in details.get("verdicts", [])}
        scores = result.scores.tolist() if result.scores is not None else [1.0] * len(nodes)
        weights = result.weights.tolist()
        now = self.clock()
        verdicts = []
        for node, rec, idx, score, flag in zip(
            nodes, receipts, ids, scores, result.flagged.tolist(), strict=True
        ):
            label: VerdictLabel = (
                "rejected" if idx in quarantined else ("flagged" if flag else "accepted")
            )
            verdicts.append(
                sign_message(
                    Verdict(
                        gradient_hash=rec.gradient_hash,
                        node_id=node,
                        round=self.round,
                        score=float(score),
                        verdict=label,
                        reasons=reasons_by_id.get(idx, []),
                        timestamp=now,
                        validator_id=self.validator_id,
                    ),
                    self.identity,
                )
            )
        closed = self.round
        self.theta = self.theta + self.config.server_lr * result.aggregate.to(self.theta.dtype)
        self._round_weights[closed] = {
            n: float(w)
            for n, w, v in zip(nodes, weights, verdicts, strict=True)
            if v.verdict == "accepted"
        }
        self.round += 1
        self._pending = {}
        self._pending_hashes = set()
        self._save_state(verdicts)
        self._append_verdicts(verdicts, closed)
        for listener in list(self._listeners):
            for verdict in verdicts:
                listener(verdict)
        return verdicts

    def _append_verdicts(
        self, verdicts: list[Verdict], closed: int, *, recovering: bool = False
    ) -> None:
        """Append the round's verdicts and its round entry in one transaction (one commit for the
        whole round). ``recovering``: skip entries a crash did not cut off."""
        items: list[dict[str, Any]] = [
            {
                "kind": "verdict",
                "round": v.round,
                "node_id": v.node_id,
                "gradient_hash": v.gradient_hash,
                "score": v.score,
                "verdict": v.verdict,
                "reasons": v.reasons,
                "timestamp": v.timestamp,
                "sign": self.identity.sign,
                "validator_id": self.validator_id,
            }
            for v in verdicts
            if not recovering
            or not self.ledger.find_verdict(v.gradient_hash, node_id=v.node_id, round=v.round)
        ]
        if not recovering or not any(
            e.kind == "round" and e.round == closed for e in self.ledger.entries()
        ):
            acc = self.task.accuracy(self.theta)
            items.append(
                {
                    "kind": "round",
                    "round": closed,
                    "gradient_hash": gradient_hash(self.theta.numpy()),
                    "score": acc,
                    "reasons": [
                        {"signal": "accepted", "value": len(self._round_weights.get(closed, {}))}
                    ],
                    "timestamp": self.clock(),
                    "sign": self.identity.sign,
                    "validator_id": self.validator_id,
                }
            )
        self.ledger.append_batch(items)

    # ------------------------------------------------------------------------------- queries
    def verdict(self, gradient_hash_: str) -> Verdict:
        """The signed verdict on a gradient; :class:`NotFoundError` while its round is open."""
        if gradient_hash_ in self._pending_hashes:  # cheap answer for clients that poll
            raise NotFoundError(
                f"gradient {gradient_hash_[:12]}… is in the open round {self.round}; "
                "its verdict comes when the round closes"
            )
        entry = self.ledger.find_verdict(gradient_hash_)
        if entry is None:
            raise NotFoundError(f"no verdict for gradient {gradient_hash_}")
        return sign_message(
            Verdict(
                gradient_hash=entry.gradient_hash,
                node_id=entry.node_id,
                round=entry.round,
                score=entry.score,
                verdict=entry.verdict,
                reasons=entry.reasons,
                timestamp=entry.timestamp,
                validator_id=self.validator_id,
            ),
            self.identity,
        )

    def trusted_gradients(self, round: int, min_score: float = 0.0) -> list[TrustedGradient]:
        """Accepted gradients of a closed round with score ≥ ``min_score``, best first."""
        with self._lock:
            if round >= self.round:
                raise NotFoundError(f"round {round} is not closed yet (round {self.round} is open)")
            weights = self._round_weights.get(round, {})
        out = [
            TrustedGradient(
                node_id=e.node_id,
                gradient_hash=e.gradient_hash,
                score=e.score,
                weight=weights.get(e.node_id, 0.0),
            )
            for e in self.ledger.verdicts(round)
            if e.verdict == "accepted" and e.score >= min_score
        ]
        return sorted(out, key=lambda t: -t.score)

    def reputation(self, node_id: str) -> NodeReputation:
        """The node's RB-BFT reputation (its starting value if it never submitted)."""
        with self._lock:
            idx = self._index_of(node_id)
            rec = self.rule._engine.reputation.get(idx)
            return NodeReputation(
                node_id=node_id,
                reputation=float(rec.reputation),
                quarantined=bool(rec.quarantined),
                rounds_seen=int(rec.rounds),
            )

    # --------------------------------------------------------------------------- subscribers
    def subscribe(self, listener: VerdictListener) -> Callable[[], None]:
        """Call ``listener(verdict)`` for every verdict from now on; returns an unsubscribe."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # --------------------------------------------------------------------------- persistence
    def _save_state(self, verdicts: list[Verdict]) -> None:
        self.ledger.put_state(
            _STATE_KEY,
            {
                "validator_id": self.validator_id,
                "round": self.round,
                "theta": encode_state(self.theta),
                "rule": encode_state(self.rule.state_dict()),
                "round_weights": {str(r): w for r, w in self._round_weights.items()},
                "last_verdicts": [v.to_json_dict() for v in verdicts],
            },
        )

    def _restore(self) -> None:
        for i, node in enumerate(self.ledger.nodes()):
            self._node_index[node.node_id] = i
        state = self.ledger.get_state(_STATE_KEY)
        if state is not None:
            if state["validator_id"] != self.validator_id:
                raise ServiceError(
                    f"this ledger belongs to validator {state['validator_id']}, "
                    f"not {self.validator_id}: start with its key"
                )
            theta = decode_state(state["theta"])
            if theta.numel() != self.task.dim:
                raise ServiceError(
                    f"the ledger's model has {theta.numel()} parameters; this configuration's "
                    f"has {self.task.dim}"
                )
            self.round = int(state["round"])
            self.theta = theta
            self.rule.load_state_dict(decode_state(state["rule"]))
            self._round_weights = {int(r): w for r, w in state["round_weights"].items()}
            verdicts = [Verdict.model_validate(v) for v in state["last_verdicts"]]
            if verdicts:  # a crash may have cut the round's entries off
                self._append_verdicts(verdicts, self.round - 1, recovering=True)
        for entry, payload in self.ledger.submissions_with_payloads(self.round):
            vec = decode_vector(payload, max_bytes=len(payload) + 1, expected_size=self.task.dim)
            self._pending[entry.node_id] = (self._receipt(entry), vec)
            self._pending_hashes.add(entry.gradient_hash)


def model_payload(validator: MATLValidator) -> tuple[dict[str, Any], bytes]:
    """The global model as (JSON description, safetensors payload)."""
    theta = validator.global_model()
    return (
        {"round": validator.round, "dim": int(theta.size), "gradient_hash": gradient_hash(theta)},
        encode_vector(theta),
    )
