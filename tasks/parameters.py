"""Typed Prefect flow parameters, built from the config schema: the Prefect UI draws a form with
one field per params.yaml key (its type, allowed values and help), and a run's parameters are
validated before any task starts."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from tampkit.methods.presets import ALLOCATIONS, SCORERS
from tampkit.pipeline.schema import KNOB, KNOBS, Knob


def _annotation(knob: Knob) -> Any:
    if knob.allowed is not None:
        return Literal[knob.allowed]  # type: ignore[valid-type]
    return list[str] if knob.kind is list else knob.kind


#: The values `prune.method` takes (a sweep's `methods` list).
MethodName = _annotation(KNOB["prune.method"])

#: The values `prune.scorer` and `prune.allocation` take, less "method" (a sweep's lists).
ScorerName = Literal[SCORERS]  # type: ignore[valid-type]
AllocationName = Literal[ALLOCATIONS]  # type: ignore[valid-type]

#: Dotted params.yaml keys -> values, every one optional: `{"prune.sparsity": 0.6}`.
Overrides: type[BaseModel] = create_model(
    "Overrides",
    __config__=ConfigDict(extra="forbid", populate_by_name=True),
    **{knob.key.replace(".", "__"): (Optional[_annotation(knob)], Field(None, alias=knob.key, description=knob.help))
       for knob in KNOBS},
)


def as_dict(overrides: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The keys a run set (dotted), for `load_params`."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        overrides = Overrides.model_validate(overrides)
    return overrides.model_dump(by_alias=True, exclude_none=True)
