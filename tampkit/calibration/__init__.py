"""Calibration data: where samples come from and how a deterministic subset is chosen."""

from tampkit.calibration.sources import CALIBRATION_SOURCES, load_calibration, select_samples

__all__ = ["CALIBRATION_SOURCES", "load_calibration", "select_samples"]
