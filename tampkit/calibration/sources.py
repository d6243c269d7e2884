"""--calibration values and deterministic selection of --nsamples samples with --seed.

Besides the built-in sources, a package adds named ones through the entry point group
`tampkit.calibration`: each entry point names a function `(nsamples, seed) -> list[Sample]` that
returns the same samples for the same arguments, e.g. in its pyproject.toml::

    [project.entry-points."tampkit.calibration"]
    scenes = "tampkit.organism.calibration:scene_calibration"

(this package's own organism adds `scenes` that way). A built-in name wins over a plug-in's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from tampkit.calibration.av_builtin import builtin_av_samples
from tampkit.calibration.avinstruct import load_avinstruct
from tampkit.calibration.builtin import builtin_image_samples, builtin_samples, builtin_text_samples
from tampkit.calibration.jsonl import load_jsonl_folder
from tampkit.calibration.sharegpt4v import load_sharegpt4v
from tampkit.core.entry_points import group_points, load_point
from tampkit.core.errors import UsageError
from tampkit.core.types import Sample

GROUP = "tampkit.calibration"
#: Built-in named sources: the pool each draws from.
BUILTIN_POOLS: dict[str, Callable[[], list[Sample]]] = {
    "builtin": builtin_samples, "builtin-images": builtin_image_samples, "builtin-text": builtin_text_samples,
    "builtin-av": builtin_av_samples}
#: The --calibration forms that take a location.
LOCATED_SOURCES = ("sharegpt4v[:PATH]", "avinstruct:PATH", "a folder of *.jsonl")


def plugin_source_names() -> list[str]:
    """Names of the installed plug-in sources, in name order (none of them imported)."""
    return [point.name for point in group_points(GROUP) if point.name not in BUILTIN_POOLS]


def calibration_sources() -> tuple[str, ...]:
    """Every --calibration form, for help texts and errors: the built-in names, the plug-ins' names,
    then the forms that take a location."""
    return (*BUILTIN_POOLS, *plugin_source_names(), *LOCATED_SOURCES)


def plugin_source(name: str) -> Callable[[int, int], list[Sample]] | None:
    """The installed plug-in source called `name`, if there is one that loads."""
    point = next((p for p in group_points(GROUP) if p.name == name and name not in BUILTIN_POOLS), None)
    if point is None:
        return None
    loaded = load_point(point, "calibration")
    if loaded is not None and not callable(loaded):
        raise UsageError("--calibration", f"calibration plug-in '{name}' ({point.value}) is not a function")
    return loaded


def select_samples(pool: list[Sample], nsamples: int, seed: int) -> list[Sample]:
    """`nsamples` distinct samples drawn with `seed`; the same arguments give the same list."""
    if nsamples < 1:
        raise UsageError("--nsamples", f"must be at least 1, got {nsamples}")
    if nsamples > len(pool):
        raise UsageError("--nsamples", f"{nsamples} requested but the source has {len(pool)} samples", f"1..{len(pool)}")
    return random.Random(seed).sample(pool, nsamples)


def load_calibration(source: str, nsamples: int, seed: int) -> list[Sample]:
    """Resolve a --calibration value to the selected samples."""
    if source.startswith("sharegpt4v"):
        location = source.partition(":")[2] or None
        return load_sharegpt4v(location, nsamples, seed)
    if source.startswith("avinstruct:"):
        return select_samples(load_avinstruct(source.partition(":")[2]), nsamples, seed)
    if source in BUILTIN_POOLS:
        return select_samples(BUILTIN_POOLS[source](), nsamples, seed)
    plugin = plugin_source(source)
    if plugin is not None:
        return plugin(nsamples, seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return select_samples(load_jsonl_folder(path), nsamples, seed)
    raise UsageError("--calibration", f"'{source}' is neither a known source nor a folder", calibration_sources())
