"""Plug-ins by Python entry point group: the one way anything, this package's own organism included,
adds model adapters, calibration sources or evaluation suites (`tampkit.models.plugins`,
`tampkit.calibration.sources`, `tampkit.evaluation.suites`), so that no lower layer imports it."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tampkit.core.log import warn


def group_points(group: str) -> list[EntryPoint]:
    """The group's entry points in name order (nothing imported yet)."""
    return sorted(entry_points(group=group), key=lambda p: p.name)


def load_point(point: EntryPoint, what: str) -> Any | None:
    """The object an entry point names; None, with one warning line, when its module fails to import
    (a plug-in's missing dependency must not break the rest)."""
    try:
        return point.load()
    except Exception as err:  # noqa: BLE001
        warn(f"{what} plug-in '{point.name}' ({point.value}) not loaded: {err}")
        return None
