"""RB-BFT reputation: dynamics, quarantine, release, state."""

from __future__ import annotations

import json
import math

import pytest
import torch

from matl.errors import ConfigError
from matl.trust.reputation import ReputationBook


def _round(
    book: ReputationBook, scores: list[float], bad: list[bool], ids: list[int] | None = None
):
    ids = ids if ids is not None else list(range(len(scores)))
    return book.update(
        ids, torch.tensor(scores, dtype=torch.float64), torch.tensor(bad, dtype=torch.bool)
    )


def test_clean_rounds_are_an_ema_and_violations_decay_faster() -> None:
    book = ReputationBook(r0=0.5, gain=0.2, penalty=0.5)
    up = _round(book, [1.0, 1.0], [False, True])
    assert up.reputation.tolist() == pytest.approx([0.5 * 0.8 + 0.2, 0.25])
    # one violation undoes more than one clean round earns
    book2 = ReputationBook()
    _round(book2, [0.8], [False])
    r1 = book2.get(0).reputation
    _round(book2, [0.8], [True])
    assert r1 - book2.get(0).reputation > r1 - 0.5


def test_new_clients_start_at_r0_and_absent_clients_are_unchanged() -> None:
    book = ReputationBook(r0=0.3)
    assert book.reputation([5]).tolist() == [0.3]
    _round(book, [1.0], [False], ids=[5])
    before = book.get(5).reputation
    _round(book, [0.0], [True], ids=[6])
    assert book.get(5).reputation == before


def test_quarantine_after_repeated_violations_and_release_after_clean_rounds() -> None:
    book = ReputationBook(max_violations=3, window=5, release_after=2)
    states = []
    for bad in [True, False, True, True, False, False, False]:
        up = _round(book, [0.2 if bad else 0.9], [bad])
        states.append(
            (bool(up.quarantined[0]), bool(up.newly_quarantined[0]), bool(up.released[0]))
        )
    assert states == [
        (False, False, False),
        (False, False, False),
        (False, False, False),
        (True, True, False),  # 3 violations within the last 5 participations
        (True, False, False),  # 1 clean round
        (False, False, True),  # 2 clean rounds: released
        (False, False, False),  # memory cleared: stays free
    ]
    assert book.get(0).quarantines == 1 and book.get(0).violations == 3


def test_a_violation_while_quarantined_restarts_the_release_count() -> None:
    book = ReputationBook(max_violations=2, window=None, release_after=2)
    for bad in [True, True, False, True, False]:
        up = _round(book, [0.5], [bad])
    assert bool(up.quarantined[0])  # clean streak is only 1
    up = _round(book, [0.5], [False])
    assert not bool(up.quarantined[0])


def test_consecutive_mode_ignores_interleaved_violations() -> None:
    book = ReputationBook(max_violations=2, window=None)
    for bad in [True, False] * 5:
        up = _round(book, [0.5], [bad])
        assert not bool(up.quarantined[0])


def test_weights_are_reputation_times_score_on_eligible_clients() -> None:
    w = ReputationBook.weights(
        torch.tensor([0.5, 1.0, 0.8]),
        torch.tensor([0.8, 0.5, 1.0]),
        torch.tensor([True, True, False]),
    )
    assert w.tolist() == pytest.approx([0.4, 0.5, 0.0])


def test_state_round_trip_through_json() -> None:
    book = ReputationBook(max_violations=2, window=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        _round(
            book, torch.rand(4, generator=g).tolist(), (torch.rand(4, generator=g) < 0.5).tolist()
        )
    state = json.loads(json.dumps(book.state_dict()))  # ids become strings
    other = ReputationBook(max_violations=2, window=3)
    other.load_state_dict(state)
    assert other.state_dict() == book.state_dict()
    a = _round(book, [0.5] * 4, [True, False, True, False])
    b = _round(other, [0.5] * 4, [True, False, True, False])
    assert torch.equal(a.reputation, b.reputation) and torch.equal(a.quarantined, b.quarantined)
    other.reset()
    assert other.state_dict() == {"clients": {}}
    with pytest.raises(ValueError, match="unknown keys"):
        other.load_state_dict({"oops": 1})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"r0": 1.5},
        {"gain": 0},
        {"penalty": 0.1, "gain": 0.2},
        {"max_violations": 0},
        {"window": 2, "max_violations": 3},
        {"release_after": 0},
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ReputationBook(**kwargs)


def test_a_longer_record_needs_a_longer_release() -> None:
    """``release_per_violation``: a quarantined client is released after
    ``max(release_after, ceil(ratio * lifetime violations))`` consecutive clean rounds."""
    book = ReputationBook(max_violations=2, window=None, release_after=2, release_per_violation=0.5)
    for _ in range(7):
        _round(book, [0.0], [True], ids=[5])
    assert book.get(5).quarantined and book.get(5).violations == 7
    held = []
    for _ in range(5):
        _round(book, [1.0], [False], ids=[5])
        held.append(book.get(5).quarantined)
    assert held == [True, True, True, False, False]  # ceil(3.5) = 4 clean rounds
    short = ReputationBook(max_violations=2, window=None, release_after=2)
    for bad in [True] * 7 + [False] * 2:
        _round(short, [float(not bad)], [bad], ids=[5])
    assert not short.get(5).quarantined  # the ratio is off by default
    with pytest.raises(ConfigError, match="release_per_violation"):
        ReputationBook(release_per_violation=-1.0)


def test_marks_count_the_rounds_a_client_carried_a_signature() -> None:
    book = ReputationBook()
    book.update(
        [1, 2], torch.ones(2), torch.zeros(2, dtype=torch.bool), marked=torch.tensor([True, False])
    )
    book.update(
        [1, 3], torch.ones(2), torch.zeros(2, dtype=torch.bool), marked=torch.tensor([True, True])
    )
    book.update([2], torch.ones(1), torch.zeros(1, dtype=torch.bool))  # no marks given: unchanged
    assert book.marks([1, 2, 3, 99]).tolist() == [2, 0, 1, 0]
    restored = ReputationBook()
    restored.load_state_dict(book.state_dict())
    assert restored.marks([1, 3]).tolist() == [2, 1]
    old = book.state_dict()
    for st in old["clients"].values():
        del st["marks"]  # a state saved before marks existed
    restored.load_state_dict(old)
    assert restored.marks([1]).tolist() == [0]
    with pytest.raises(ValueError, match="marks"):
        book.update(
            [1],
            torch.ones(1),
            torch.zeros(1, dtype=torch.bool),
            marked=torch.ones(2, dtype=torch.bool),
        )


def test_update_checks_shapes_and_ids() -> None:
    book = ReputationBook()
    with pytest.raises(ValueError, match="repeated"):
        _round(book, [0.5, 0.5], [False, False], ids=[1, 1])
    with pytest.raises(ValueError, match="needs"):
        book.update([1, 2], torch.zeros(3), torch.zeros(2, dtype=torch.bool))


def _loop_update(
    book: dict,
    ids: list[int],
    scores: list[float],
    bad: list[bool],
    marked: list[bool],
    switched: list[bool],
    failed: list[bool],
    **cfg,
) -> None:
    """The dynamics of the module docstring, one client at a time (the reference)."""
    memory = cfg["window"] or cfg["max_violations"]
    hold = cfg.get("hold_after_switches")
    for cid, score, b, m, sw, f in zip(ids, scores, bad, marked, switched, failed, strict=True):
        st = book.setdefault(cid, {"reputation": cfg["r0"], "recent": [], "quarantined": False,
                                   "clean_streak": 0, "rounds": 0, "violations": 0,
                                   "quarantines": 0, "marks": 0, "switch_streak": 0,
                                   "switch_failed": False, "held": False})  # fmt: skip
        st["marks"] += int(m)
        st["switch_streak"] = st["switch_streak"] + 1 if sw else 0
        st["switch_failed"] = sw and (st["switch_failed"] or f)
        st["held"] = st["held"] or (
            hold is not None and st["switch_failed"] and st["switch_streak"] >= hold
        )
        was = st["quarantined"]
        st["rounds"] += 1
        if b:
            st["reputation"] = (1.0 - cfg["penalty"]) * st["reputation"]
            st["violations"] += 1
            st["clean_streak"] = 0
        else:
            st["reputation"] = (1.0 - cfg["gain"]) * st["reputation"] + cfg["gain"] * score
            st["clean_streak"] += 1
        st["reputation"] = min(max(st["reputation"], 0.0), 1.0)
        st["recent"] = (st["recent"] + [b])[-memory:]
        if was:
            needed = max(
                cfg["release_after"], math.ceil(cfg["release_per_violation"] * st["violations"])
            )
            if st["clean_streak"] >= needed and not st["held"]:
                st["quarantined"] = False
                st["recent"] = []
        elif sum(st["recent"]) >= cfg["max_violations"] or st["held"]:
            st["quarantined"] = True
            st["quarantines"] += 1


@pytest.mark.parametrize("hold", [None, 2])
@pytest.mark.parametrize("window", [None, 4])
def test_vectorised_update_equals_the_per_client_loop(window: int | None, hold: int | None) -> None:
    """Random rounds over a changing subset of 40 clients: the column-stored book ends in exactly
    the state (bit for bit) of the per-client loop, and so does a book restored mid-way."""
    cfg = {"r0": 0.4, "gain": 0.25, "penalty": 0.6, "max_violations": 2, "window": window,
           "release_after": 2, "release_per_violation": 0.3,
           "hold_after_switches": hold}  # fmt: skip
    book = ReputationBook(**cfg)
    ref: dict = {}
    g = torch.Generator().manual_seed(0)
    for rnd in range(60):
        ids = torch.randperm(40, generator=g)[: int(torch.randint(5, 30, (1,), generator=g))]
        ids_list = [int(i) * 3 + 1 for i in ids]  # ids that are not row numbers
        scores = torch.rand(len(ids_list), generator=g, dtype=torch.float64) * 1.2 - 0.1
        bad = torch.rand(len(ids_list), generator=g) < 0.35
        marked = torch.rand(len(ids_list), generator=g) < 0.2
        switched = torch.rand(len(ids_list), generator=g) < 0.3
        failed = torch.rand(len(ids_list), generator=g) < 0.5
        update = book.update(
            ids_list, scores, bad, marked=marked, switched=switched, switch_failed=failed
        )
        _loop_update(
            ref,
            ids_list,
            scores.clamp(0.0, 1.0).tolist(),
            bad.tolist(),
            marked.tolist(),
            switched.tolist(),
            failed.tolist(),
            **cfg,
        )
        assert update.held.tolist() == [ref[c]["held"] for c in ids_list]
        assert update.switch_streak.tolist() == [ref[c]["switch_streak"] for c in ids_list]
        assert book.marks(ids_list).tolist() == [ref[c]["marks"] for c in ids_list]
        assert update.reputation.tolist() == [ref[c]["reputation"] for c in ids_list]
        assert update.quarantined.tolist() == [ref[c]["quarantined"] for c in ids_list]
        assert update.recent_violations.tolist() == [sum(ref[c]["recent"]) for c in ids_list]
        if rnd == 30:
            restored = ReputationBook(**cfg)
            restored.load_state_dict(book.state_dict())
            book = restored
    assert book.state_dict() == {"clients": ref}
    assert any(st["held"] for st in ref.values()) == (hold is not None)
    assert book.reputation([1, 4, 999]).tolist() == [
        ref.get(1, {"reputation": 0.4})["reputation"],
        ref.get(4, {"reputation": 0.4})["reputation"],
        0.4,
    ]


def test_state_with_a_longer_memory_than_the_book_is_rejected() -> None:
    state = ReputationBook(max_violations=2, window=5).state_dict()
    state["clients"] = {7: {"reputation": 0.5, "recent": [True] * 5, "quarantined": True,
                            "clean_streak": 0, "rounds": 5, "violations": 5, "quarantines": 1}}  # fmt: skip
    with pytest.raises(ValueError, match="remembers 5 participations"):
        ReputationBook(max_violations=2, window=3).load_state_dict(state)


def test_a_lasting_switch_holds_a_client_until_released_by_hand() -> None:
    """An isolated switch is forgiven; two in a row hold the client in quarantine through any
    number of clean rounds, across a state round trip, until :meth:`release`."""
    book = ReputationBook(hold_after_switches=2)
    clean = torch.zeros(2, dtype=torch.bool)

    def step(switched: list[bool]) -> None:
        book.update([1, 2], torch.ones(2), clean, switched=torch.tensor(switched))

    for pattern in ([True, True], [False, True], [True, False], [False, False]):
        step(pattern)  # client 1: isolated switches; client 2: two in a row (rounds 1-2)
    assert book.held([1, 2, 99]).tolist() == [False, True, False]
    for _ in range(20):
        step([False, False])
    assert book.get(2).quarantined and book.get(2).held and book.get(2).quarantines == 1
    assert not book.get(1).quarantined
    restored = ReputationBook(hold_after_switches=2)
    restored.load_state_dict(book.state_dict())
    assert restored.held([2]).tolist() == [True]
    old = book.state_dict()
    for st in old["clients"].values():
        del st["held"], st["switch_streak"]  # a state saved before holds existed
    restored.load_state_dict(old)
    assert restored.held([2]).tolist() == [False]
    book.release([2, 99])
    assert not book.get(2).held and not book.get(2).quarantined
    step([False, False])
    assert (
        book.weights(book.reputation([1, 2]), torch.ones(2), torch.ones(2, dtype=torch.bool))[1] > 0
    )


def test_switches_count_only_when_holds_are_on_and_shapes_are_checked() -> None:
    book = ReputationBook()  # hold_after_switches=None: switches are counted, nobody is held
    for _ in range(5):
        up = book.update([7], torch.ones(1), torch.zeros(1, dtype=torch.bool),
                         switched=torch.ones(1, dtype=torch.bool))  # fmt: skip
    assert up.switch_streak.tolist() == [5] and not bool(up.held.any())
    with pytest.raises(ValueError, match="switches"):
        book.update([7], torch.ones(1), torch.zeros(1, dtype=torch.bool),
                    switched=torch.ones(2, dtype=torch.bool))  # fmt: skip
    with pytest.raises(ValueError, match="failed switches"):
        book.update([7], torch.ones(1), torch.zeros(1, dtype=torch.bool),
                    switched=torch.ones(1, dtype=torch.bool),
                    switch_failed=torch.ones(3, dtype=torch.bool))  # fmt: skip
    with pytest.raises(ConfigError, match="hold_after_switches"):
        ReputationBook(hold_after_switches=0)


def test_a_run_of_switches_needs_a_failed_one_to_hold() -> None:
    """Mild switches in a row (none failed) never hold; one failed switch inside a run does, and a
    failure in an earlier, broken run does not carry over."""
    book = ReputationBook(hold_after_switches=2)
    ok = torch.zeros(1, dtype=torch.bool)

    def step(switched: bool, failed: bool) -> bool:
        up = book.update([5], torch.ones(1), ok, switched=torch.tensor([switched]),
                         switch_failed=torch.tensor([failed]))  # fmt: skip
        return bool(up.held[0])

    assert not any(step(True, False) for _ in range(6))  # six mild switches in a row
    assert not step(False, False)
    assert not step(True, True)  # a failed switch, alone so far
    assert not step(False, False)  # the run breaks: its failure is forgotten
    assert not step(True, False) and not step(True, False)
    assert not step(False, False)
    assert not step(True, True)  # a failed switch starts a run ...
    assert step(True, False)  # ... and a second switch in a row holds the client
