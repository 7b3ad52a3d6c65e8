"""MATLValidator: intake checks, scoring, signed verdicts, queries and restarts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from safetensors.numpy import save

from matl.crypto import Identity
from matl.errors import (
    AuthenticationError,
    InvalidUpdateError,
    MalformedPayloadError,
    NotFoundError,
    PayloadTooLargeError,
    ReplayError,
    ServiceError,
    UnknownNodeError,
    WrongRoundError,
)
from matl.ledger import verify_ledger
from matl.protocol import Submission
from matl.validator import MATLValidator

Make = Callable[..., MATLValidator]
Honest = Callable[[int], np.ndarray]


def _nodes(v: MATLValidator, k: int) -> list[Identity]:
    ids = [Identity.generate() for _ in range(k)]
    for i in ids:
        v.register(i.public_key)
    return ids


def test_a_round_gives_signed_verdicts_flags_the_attacker_and_moves_the_model(
    make_validator: Make, honest: Honest
) -> None:
    v = make_validator(round_size=5)
    nodes = _nodes(v, 5)
    before = v.global_model()
    receipts = []
    for i, node in enumerate(nodes):
        grad = honest(i) if i < 4 else -4 * honest(99)
        receipts.append(v.submit(Submission.create(node, grad, round=0)))
    assert all(r.verify(v.validator_id) for r in receipts)
    assert v.round == 1  # round_size reached: the round closed itself
    verdicts = [v.verdict(r.gradient_hash) for r in receipts]
    assert all(x.verify(v.validator_id) for x in verdicts)
    assert [x.verdict for x in verdicts] == ["accepted"] * 4 + ["flagged"]
    assert verdicts[4].reasons and {"signal", "value", "threshold", "passed"} <= set(
        verdicts[4].reasons[0]
    )
    trusted = v.trusted_gradients(0)
    assert {t.node_id for t in trusted} == {n.node_id for n in nodes[:4]}
    assert sum(t.weight for t in trusted) == pytest.approx(1.0)
    assert not np.allclose(v.global_model(), before)
    assert v.reputation(nodes[4].node_id).reputation < v.reputation(nodes[0].node_id).reputation
    report = verify_ledger(v.ledger)
    assert report.ok, report
    kinds = [e.kind for e in v.ledger.entries()]
    assert kinds.count("submission") == 5 and kinds.count("verdict") == 5 and "round" in kinds


def test_verdict_is_not_found_while_the_round_is_open(make_validator: Make, honest: Honest) -> None:
    v = make_validator()
    (node,) = _nodes(v, 1)
    rec = v.submit(Submission.create(node, honest(0), round=0))
    with pytest.raises(NotFoundError, match="open round"):
        v.verdict(rec.gradient_hash)
    with pytest.raises(NotFoundError, match="not closed"):
        v.trusted_gradients(0)


def _entries(v: MATLValidator) -> int:
    return len(list(v.ledger.entries()))


def test_every_bad_submission_is_refused_and_stores_nothing(
    make_validator: Make, honest: Honest
) -> None:
    v = make_validator(max_payload_bytes=4096, max_metadata_bytes=64)
    node, stranger = _nodes(v, 1)[0], Identity.generate()
    good = Submission.create(node, honest(0), round=0)
    forged = good.model_copy(update={"signature": stranger.sign(good.header.signing_bytes()).hex()})
    nan = honest(1)
    nan[3] = np.nan
    wrong_size = np.zeros(7, dtype=np.float32)
    swapped = good.model_copy(
        update={"payload": Submission.create(node, honest(5), round=0).payload}
    )
    f64 = bytes(save({"gradient": honest(0).astype(np.float64)}))
    cases: list[tuple[Submission, type[ServiceError], str]] = [
        (forged, AuthenticationError, "signature"),
        (good.model_copy(update={"signature": ""}), AuthenticationError, "signature"),
        (Submission.create(stranger, honest(0), round=0), UnknownNodeError, "not registered"),
        (Submission.create(node, honest(0), round=3), WrongRoundError, "round 0 is open"),
        (Submission.create(node, nan, round=0), InvalidUpdateError, "NaN"),
        (Submission.create(node, wrong_size, round=0), InvalidUpdateError, "has 7 values"),
        (
            Submission.create(node, np.zeros(5000, np.float32), round=0),
            PayloadTooLargeError,
            "limit",
        ),
        (good.model_copy(update={"payload": b"junk"}), MalformedPayloadError, "safetensors"),
        (good.model_copy(update={"payload": f64}), InvalidUpdateError, "float32"),
        (swapped, AuthenticationError, "SHA-256"),
        (
            Submission.create(node, honest(0), round=0, metadata={"x": "y" * 100}),
            PayloadTooLargeError,
            "metadata",
        ),
    ]
    for sub, error, match in cases:
        with pytest.raises(error, match=match):
            v.submit(sub)
        assert _entries(v) == 0, f"{error.__name__} stored something"
    v.submit(good)
    for again in (good, Submission.create(node, honest(2), round=0)):  # same nonce, new nonce
        with pytest.raises(ReplayError, match="already submitted"):
            v.submit(again)
    assert _entries(v) == 1


def test_allowlist_registration(make_validator: Make) -> None:
    allowed, other = Identity.generate(), Identity.generate()
    v = make_validator(registration="allowlist", allowlist=(allowed.node_id,))
    assert v.register(allowed.public_key) == allowed.node_id
    assert v.register(allowed.public_key) == allowed.node_id  # idempotent
    with pytest.raises(UnknownNodeError, match="allow-list"):
        v.register(other.public_key)


def test_close_round_early_needs_min_round_size(make_validator: Make, honest: Honest) -> None:
    v = make_validator(round_size=10, min_round_size=3)
    nodes = _nodes(v, 3)
    v.submit(Submission.create(nodes[0], honest(0), round=0))
    with pytest.raises(ServiceError, match="at least 3"):
        v.close_round()
    for i, node in enumerate(nodes[1:], 1):
        v.submit(Submission.create(node, honest(i), round=0))
    assert len(v.close_round()) == 3 and v.round == 1


def test_restart_keeps_round_model_reputation_and_open_submissions(
    make_validator: Make, honest: Honest
) -> None:
    v = make_validator(round_size=4)
    nodes = _nodes(v, 4)
    for i, node in enumerate(nodes):
        v.submit(Submission.create(node, honest(i) if i else -4 * honest(9), round=0))
    pending = v.submit(Submission.create(nodes[1], honest(11), round=1))
    model, rep = v.global_model(), v.reputation(nodes[0].node_id)
    v.ledger.close()

    again = make_validator(round_size=4)
    assert again.round == 1
    np.testing.assert_array_equal(again.global_model(), model)
    assert again.reputation(nodes[0].node_id) == rep
    assert again.round_info().submissions == 1
    assert again.receipt(nodes[1].node_id, 1) == pending
    with pytest.raises(ReplayError):
        again.submit(Submission.create(nodes[1], honest(12), round=1))
    for i, node in enumerate([nodes[0], nodes[2], nodes[3]]):
        again.submit(Submission.create(node, honest(20 + i), round=1))
    assert again.round == 2 and verify_ledger(again.ledger).ok


def test_a_ledger_refuses_another_validators_key(
    make_validator: Make, honest: Honest, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from matl.ledger import open_ledger
    from matl.validator import ValidatorConfig

    v = make_validator(round_size=1)
    (node,) = _nodes(v, 1)
    v.submit(Submission.create(node, honest(0), round=0))
    v.ledger.close()
    with pytest.raises(ServiceError, match="belongs to validator"):
        MATLValidator(
            ValidatorConfig(dim=40, round_size=1),
            open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}"),
            Identity.generate(),
        )


def test_subscribers_hear_every_verdict(make_validator: Make, honest: Honest) -> None:
    v = make_validator(round_size=3)
    heard: list[str] = []
    stop = v.subscribe(lambda verdict: heard.append(verdict.node_id))
    nodes = _nodes(v, 3)
    for i, node in enumerate(nodes):
        v.submit(Submission.create(node, honest(i), round=0))
    assert sorted(heard) == sorted(n.node_id for n in nodes)
    stop()
    for i, node in enumerate(nodes):
        v.submit(Submission.create(node, honest(i + 10), round=1))
    assert len(heard) == 3


def test_mode1_scores_with_its_validation_data(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from matl.ledger import open_ledger
    from matl.validator import ValidatorConfig

    cfg = ValidatorConfig(
        mode=1,
        dataset="synthetic",
        dataset_options={"samples": 600, "test_samples": 200, "dim": 8, "classes": 3},
        model="logreg",
        round_size=4,
        validation_samples=100,
    )
    v = MATLValidator(cfg, open_ledger(f"sqlite:///{tmp_path / 'l.db'}"), Identity.generate())
    assert v.info()["dim"] == 27 and v.task.validation is not None
    # honest = one gradient-descent step on the validator's own validation loss
    x, y = v.task.validation
    theta = torch.from_numpy(v.global_model())
    assert v.task.model is not None
    _, grad = v.task.model.loss_and_grad(theta.unsqueeze(0), x.unsqueeze(0), y.unsqueeze(0))
    step = (-0.5 * grad[0]).numpy()
    nodes = _nodes(v, 4)
    for i, node in enumerate(nodes):
        update = step * (1 + 0.05 * i) if i < 3 else -step * 5
        v.submit(Submission.create(node, update, round=0))
    labels = [
        v.verdict(r.gradient_hash).verdict for r in map(lambda n: v.receipt(n.node_id, 0), nodes)
    ]
    assert labels[3] != "accepted" and labels[:3].count("accepted") >= 2
