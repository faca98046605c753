"""Drift detection: the detector contract, Scanflow's detector, baselines, Evidently's test, sample selection."""

from scanflow.drift.base import DriftResult, Detector
from scanflow.drift.selection import Selection, select_critical, select_typical

__all__ = ["Detector", "DriftResult", "Selection", "select_critical", "select_typical"]
