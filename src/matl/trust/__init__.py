"""The MATL trust engine: trust signals, the composite score and its adaptive threshold, RB-BFT
reputation, the validator committee, cartel detection, and :class:`MATLRule` (the rule ``"matl"``).
"""

from __future__ import annotations

# matl.aggregation imports matl.trust.rule at its end (to register the rule "matl"), and the trust
# modules import matl.aggregation.base: load matl.aggregation completely first, whichever of the two
# packages a user imports first, so no module here ever sees a half-initialised one.
import matl.aggregation  # noqa: F401  (isort: keep first)
from matl.trust.base import Reason, Signal, SignalResult, Verdict, client_keys
from matl.trust.cartel import CartelDetector, CartelReport
from matl.trust.committee import Committee, CommitteeDecision
from matl.trust.composite import (
    DEFAULT_WEIGHTS,
    AdaptiveThreshold,
    ThresholdDecision,
    combine,
    mode_weights,
)
from matl.trust.entropy import EntropySignal
from matl.trust.innovation import InnovationSignal
from matl.trust.modes import MODES, Mode0, Mode1
from matl.trust.peer import PeerSignal
from matl.trust.quality import PoGQSignal
from matl.trust.reputation import ReputationBook, ReputationUpdate
from matl.trust.rule import MATLRule
from matl.trust.tcdm import TCDM, CommunitySignal, TemporalSignal

__all__ = [
    "DEFAULT_WEIGHTS",
    "MODES",
    "TCDM",
    "AdaptiveThreshold",
    "CartelDetector",
    "CartelReport",
    "Committee",
    "CommitteeDecision",
    "CommunitySignal",
    "EntropySignal",
    "InnovationSignal",
    "MATLRule",
    "Mode0",
    "Mode1",
    "PeerSignal",
    "PoGQSignal",
    "Reason",
    "ReputationBook",
    "ReputationUpdate",
    "Signal",
    "SignalResult",
    "TemporalSignal",
    "ThresholdDecision",
    "Verdict",
    "client_keys",
    "combine",
    "mode_weights",
]
