"""The detection benchmark's timing harness (benchmarks/detection.py): what its ratio divides by, and that it runs."""

from __future__ import annotations

from benchmarks.detection import Timing, measure_timing
from scanflow.drift.baselines import BBSDDetector, PixelStatsDetector
from scanflow.models import Classifier


def test_a_detectors_ratio_divides_by_predict_alone_of_its_own_phases() -> None:
    """The best predict of all phases is the minimum of many more samples than any one detector's; dividing by it
    would charge a detector for the quiet moments of other detectors' phases."""
    timing = Timing(with_detector={"a": 0.066, "b": 0.050}, predict_in_phase={"a": 0.044, "b": 0.040})
    assert timing.ratio("a") == 0.066 / 0.044 and timing.detect("a") == 0.066 - 0.044
    assert timing.ratio("b") == 0.050 / 0.040 and timing.predict == 0.040


def test_the_timing_pairs_every_detector_with_predict_alone_in_its_own_phases(digits) -> None:
    train, _ = digits
    classifier = Classifier(1, 8, 8, n_classes=10)
    detectors = {
        "bbsd": BBSDDetector(classifier, calibration_windows=20).fit(train.images[:400], calibration=train.images[400:800]),
        "pixel_stats": PixelStatsDetector(calibration_windows=20).fit(train.images[:400], calibration=train.images[400:800]),
    }
    timing = measure_timing(classifier, detectors, train.images[:100], repeats=2)
    assert set(timing.with_detector) == set(timing.predict_in_phase) == set(detectors)
    assert all(timing.predict_in_phase[name] > 0 for name in detectors)
    assert all(timing.with_detector[name] > 0 for name in detectors)
