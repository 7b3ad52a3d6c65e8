"""``matl node``'s loop: nodes train on their shards and submit; the validator scores them."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from matl.client import InProcessTransport, MATLClient
from matl.crypto import Identity
from matl.errors import ConfigError
from matl.ledger import open_ledger, verify_ledger
from matl.node import NodeConfig, NodeRound, run_node
from matl.server.service import ValidatorService
from matl.validator import MATLValidator, ValidatorConfig


def test_three_nodes_one_flipping_run_two_rounds(tmp_path: Path) -> None:
    # Six nodes, not four: in a 4-node round an honest node whose update turned by about 90°
    # between its first two rounds fails TCDM's temporal test outright and, with the engine's
    # own-signature cut, is flagged (docs/network.md).
    cfg = ValidatorConfig(
        dataset="synthetic",
        dataset_options={"samples": 900, "test_samples": 300, "dim": 8, "classes": 3},
        model="logreg",
        round_size=6,
    )
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    service = ValidatorService(MATLValidator(cfg, ledger, Identity.generate()))
    results: dict[int, list[NodeRound]] = {}

    def node(shard: int) -> None:
        flip = 4.0 if shard == 5 else None
        ncfg = NodeConfig(shard=shard, shards=6, rounds=2, local_steps=5, flip_scale=flip)
        results[shard] = run_node(MATLClient(InProcessTransport(service)), ncfg)

    threads = [threading.Thread(target=node, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1, 2, 3, 4, 5]
    for shard in (0, 1, 2, 3, 4):
        assert [r.verdict.verdict for r in results[shard]] == ["accepted", "accepted"]
    assert all(r.verdict.verdict != "accepted" for r in results[5])
    assert [r.round for r in results[0]] == [0, 1]
    rounds = [e for e in ledger.entries() if e.kind == "round"]
    assert len(rounds) == 2 and all(e.score is not None and e.score > 0.5 for e in rounds)
    assert verify_ledger(ledger).ok


def test_node_needs_a_task_and_a_valid_shard(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shard"):
        NodeConfig(shard=4, shards=4)
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    service = ValidatorService(MATLValidator(ValidatorConfig(dim=5), ledger, Identity.generate()))
    with pytest.raises(ConfigError, match="model-free"):
        run_node(MATLClient(InProcessTransport(service)), NodeConfig(shard=0, shards=2))
