"""The column-stored verdict table: what it materialises per client, and its checks."""

from __future__ import annotations

import json
import pickle

import pytest

from matl.trust.base import Reason, Verdict
from matl.trust.verdicts import ReasonColumn, VerdictTable


def _table() -> VerdictTable:
    return VerdictTable(
        [7, 8, 9],
        [0.9, 0.8, 0.1],
        [True, True, False],
        [
            ReasonColumn("pogq", [0.95, 0.4, 0.0], 0.5),
            ReasonColumn("composite", [0.9, 0.8, 0.1], 0.6, [True, True, False]),
            ReasonColumn("committee", [1.0, 0.7, 0.0], [0.66, 0.66, 0.5], [True, True, False]),
        ],
    )


def test_rows_are_the_verdicts_as_dicts() -> None:
    table = _table()
    assert len(table) == 3
    expected = Verdict(
        9,
        0.1,
        False,
        (
            Reason("pogq", 0.0, 0.5, False),
            Reason("composite", 0.1, 0.6, False),
            Reason("committee", 0.0, 0.5, False),
        ),
    )
    assert table.verdict(2) == expected and table.verdict(-1) == expected
    assert table[2] == expected.as_dict() and table[-1] == expected.as_dict()
    # a threshold shared by every client, and "passed" defaulting to value >= threshold
    assert table[1]["reasons"][0] == {
        "signal": "pogq",
        "value": 0.4,
        "threshold": 0.5,
        "passed": False,
    }
    assert list(table) == [table[0], table[1], table[2]] == table[:]
    assert table[1:] == [table[1], table[2]]
    assert table == list(table) and table == _table()
    assert table.signals == ("pogq", "composite", "committee")
    assert json.loads(json.dumps(list(table))) == list(table)
    assert pickle.loads(pickle.dumps(table)) == table


def test_untrusted_builds_only_the_clients_not_trusted() -> None:
    table = _table()
    assert table.untrusted() == [table[2]]
    assert VerdictTable([1], [1.0], [True]).untrusted() == []
    assert "1 not trusted" in repr(table)


def test_bad_indices_and_shapes_are_errors() -> None:
    table = _table()
    with pytest.raises(IndexError):
        table[3]
    with pytest.raises(IndexError):
        table.verdict(-4)
    with pytest.raises(ValueError, match="2 scores for 3 clients"):
        VerdictTable([1, 2, 3], [0.1, 0.2], [True, True, True])
    with pytest.raises(ValueError, match="column 'pogq'"):
        VerdictTable([1, 2], [0.1, 0.2], [True, True], [ReasonColumn("pogq", [0.1], 0.5)])
    with pytest.raises(ValueError, match="column 'x'"):
        VerdictTable([1], [0.1], [True], [ReasonColumn("x", [0.1], [0.5, 0.5])])
