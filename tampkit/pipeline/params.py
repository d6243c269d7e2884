"""params.yaml as typed sections built from the config schema, validated on load with one-line errors.

DVC reads the same file (each stage's `params:` lists only the keys that stage reads, see the stage
table), the Prefect flows take overrides of it, and a stage's fingerprint hashes exactly the keys
it reads, so changing the sparsity never invalidates the dense statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tampkit.core.amia_params import AmiaParams
from tampkit.core.errors import UsageError
from tampkit.core.types import Structure, parse_structure
from tampkit.methods.presets import Preset, label, resolve
from tampkit.pipeline.schema import KNOB, KNOBS, SECTIONS, check_together, section_knobs
from tampkit.pipeline.table import STAGE


def _section_class(section: str) -> type:
    fields = [(k.name, k.kind, dataclasses.field(default_factory=lambda d=k.default: copy.deepcopy(d)))
              for k in section_knobs(section)]
    return dataclasses.make_dataclass(f"{section.title()}Params", fields, frozen=True)


#: One frozen dataclass per params.yaml section, its fields and defaults from the schema.
SECTION_CLASSES: dict[str, type] = {s: _section_class(s) for s in SECTIONS}


def params_label(key: str) -> str:
    """How an error names a key of params.yaml (the CLI names its flag instead)."""
    return f"params: {key}"


@dataclasses.dataclass(frozen=True)
class Params:
    """Every knob, by section (`params.prune.sparsity`); build with `params_from_dict` to validate."""

    model: Any = dataclasses.field(default_factory=SECTION_CLASSES["model"])
    calibration: Any = dataclasses.field(default_factory=SECTION_CLASSES["calibration"])
    stats: Any = dataclasses.field(default_factory=SECTION_CLASSES["stats"])
    prune: Any = dataclasses.field(default_factory=SECTION_CLASSES["prune"])
    allocation: Any = dataclasses.field(default_factory=SECTION_CLASSES["allocation"])
    amia: Any = dataclasses.field(default_factory=SECTION_CLASSES["amia"])
    report: Any = dataclasses.field(default_factory=SECTION_CLASSES["report"])
    evaluate: Any = dataclasses.field(default_factory=SECTION_CLASSES["evaluate"])

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}}, as params.yaml writes it."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{"prune.sparsity": 0.5, ...}: MLflow params, overrides, DVC keys."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    def amia_params(self) -> AmiaParams:
        m = self.amia
        return AmiaParams(knn=m.knn, suppression=m.suppression, stop=m.stop, sigma=m.sigma,
                          positive_only=self.stats.intra == "positive", scope=m.scope)

    def method_settings(self) -> dict[str, Any]:
        """The constants a method and its allocation use (the report's `method_params`)."""
        a, m = self.allocation, self.amia
        return {"s_max_offset": a.s_max_offset, "das_score": a.das_score, "intra": self.stats.intra, "knn": m.knn,
                "suppression": m.suppression, "stop": m.stop, "sigma": m.sigma, "owl_threshold": a.owl_threshold,
                "owl_lambda": a.owl_lambda, "zo_eps": a.zo_eps, "zo_seed": a.zo_seed}

    def pair(self) -> Preset:
        """The scorer and allocation this run uses (the method's, unless `prune.scorer`/`allocation` say)."""
        return resolve(self.prune.method, self.prune.scorer, self.prune.allocation)

    def method_label(self) -> str:
        """What reports and tables call the run's method: a preset's name, else `scorer+allocation`."""
        return label(self.pair())

    def needs_dense_stats(self) -> bool:
        """Whether the allocation reads the dense statistics (DAS, OWL; never under N:M)."""
        return self.pair().allocation in ("das", "owl") and not self.structure().is_nm

    def needs_block_sensitivity(self) -> bool:
        """Whether the allocation reads ECoFLaP's zeroth-order block scores (never under N:M)."""
        return self.pair().allocation == "ecoflap" and not self.structure().is_nm

    def needs(self, stage: str) -> bool:
        """Whether this result needs `stage` (see `Stage.when`)."""
        when = STAGE[stage].when
        return when is None or bool(getattr(self, when)())

    def structure(self) -> Structure:
        """The parsed `prune.structure` (N:M fixes the sparsity at N/M)."""
        return parse_structure(self.prune.structure, self.prune.sparsity)

    def stage_view(self, stage: str) -> dict[str, Any]:
        """The params a stage reads, flat and sorted: what its fingerprint hashes."""
        keys = STAGE[stage].reads
        return {k: v for k, v in sorted(self.flat().items()) if k in keys or k.split(".")[0] in keys}

    def digest(self) -> str:
        """Hash of every knob (MLflow's `params_hash` tag of a run)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def validate_flat(values: dict[str, Any], label: Callable[[str], str] = params_label) -> dict[str, Any]:
    """Every knob's value checked and typed (unknown keys are errors); `label` names a key in errors
    (`params: prune.method` for params.yaml, `--method` for the CLI)."""
    checked = {}
    for key, value in values.items():
        if key not in KNOB:
            raise UsageError(label(key), "unknown key", sorted(KNOB))
        checked[key] = KNOB[key].validate(value, label(key))
    check_together({**{k.key: k.default for k in KNOBS}, **checked}, label)
    return checked


def params_from_flat(values: dict[str, Any], label: Callable[[str], str] = params_label) -> Params:
    """Params from dotted keys (missing ones take their defaults), validated."""
    checked = validate_flat(values, label)
    sections = {s: SECTION_CLASSES[s](**{k.name: checked[k.key] for k in section_knobs(s) if k.key in checked})
                for s in SECTIONS}
    return Params(**sections)


def params_from_dict(raw: dict[str, Any] | None) -> Params:
    """Build and validate a params.yaml mapping; missing keys take the defaults."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UsageError("params", "expected a mapping of sections", SECTIONS)
    flat: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UsageError(params_label(section), "unknown section", SECTIONS)
        values = values or {}
        if not isinstance(values, dict):
            raise UsageError(params_label(section), f"expected a mapping, got {values!r}",
                             [k.name for k in section_knobs(section)])
        for key, value in values.items():
            if f"{section}.{key}" not in KNOB:
                raise UsageError(params_label(f"{section}.{key}"), "unknown key", [k.name for k in section_knobs(section)])
            flat[f"{section}.{key}"] = value
    return params_from_flat(flat)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `raw` with dotted keys replaced ({"prune.sparsity": 0.6}), as `dvc exp run -S` does."""
    result = copy.deepcopy(raw or {})
    for dotted, value in (overrides or {}).items():
        if dotted not in KNOB:
            raise UsageError(f"override {dotted}", "unknown key", sorted(KNOB))
        section, _, key = dotted.partition(".")
        result.setdefault(section, {})[key] = value
    return result


def load_params(path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """params.yaml with dotted `overrides` applied, validated; a missing or broken file is a usage error."""
    path = Path(path)
    if not path.exists():
        raise UsageError("--params", f"{path} does not exist", "a params.yaml file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError("--params", f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None
    return params_from_dict(apply_overrides(raw or {}, overrides))
