"""Calibration data: where samples come from and how a deterministic subset is chosen."""

from tampkit.calibration.sources import calibration_sources, load_calibration, select_samples

__all__ = ["calibration_sources", "load_calibration", "select_samples"]
