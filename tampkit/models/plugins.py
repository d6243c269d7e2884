"""Plug-in adapters: model families this package ships no adapter for, added by other packages.

A plug-in is an `Adapter` subclass (or instance) registered under the Python entry point group
`tampkit.adapters`, e.g. in the plug-in's pyproject.toml::

    [project.entry-points."tampkit.adapters"]
    videollama2 = "tamp_videollama2:VideoLLaMA2Adapter"

It serves the model classes its `matches` accepts and, through `claims` / `load`, any `--model`
value it recognises (`videollama2:DAMO-NLP-SG/VideoLLaMA2.1-7B-AV`). Plug-ins are asked before the
built-in adapters, so one may also replace a built-in family. A plug-in whose module fails to
import (its model package is not installed) is skipped with one warning line; the rest of the
project never depends on it. `examples/videollama2_adapter` is a complete one; the README's
"Plug-in adapters" section walks through writing one.
"""

from __future__ import annotations

from typing import Any

from tampkit.core.entry_points import group_points, load_point
from tampkit.core.log import warn

GROUP = "tampkit.adapters"
_CACHE: list[Any] | None = None


def plugin_adapters(refresh: bool = False) -> list[Any]:
    """Adapter instances of every installed plug-in, in entry point name order (cached)."""
    global _CACHE
    if _CACHE is not None and not refresh:
        return _CACHE
    from tampkit.models.adapters import Adapter

    found = []
    for point in group_points(GROUP):
        loaded = load_point(point, "adapter")
        if loaded is None:
            continue
        adapter = loaded() if isinstance(loaded, type) else loaded
        if not isinstance(adapter, Adapter):
            warn(f"adapter plug-in '{point.name}' is not a tampkit Adapter; ignored")
            continue
        found.append(adapter)
    _CACHE = found
    return found


def claiming_plugin(spec: str) -> Any | None:
    """The plug-in that loads this --model value itself, if any."""
    return next((a for a in plugin_adapters() if a.claims(spec)), None)
