"""Metrics: detection (TPR, FPR, precision), accuracy, convergence, ASR, timing, peak memory;
across-seed CIs."""

from __future__ import annotations

from matl.metrics.detection import RunMetrics, detection_counts, rounds_to_target, run_metrics
from matl.metrics.memory import PeakRSS, current_rss_mb
from matl.metrics.stats import MeanCI, mean_ci, t_quantile_975

__all__ = [
    "MeanCI",
    "PeakRSS",
    "RunMetrics",
    "current_rss_mb",
    "detection_counts",
    "mean_ci",
    "rounds_to_target",
    "run_metrics",
    "t_quantile_975",
]
